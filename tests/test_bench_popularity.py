"""The popularity reference of bench/popularity.py on a hand-checked example."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "popularity.py"
_spec = importlib.util.spec_from_file_location("bench_popularity", _PATH)
popularity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(popularity)


def test_popularity_metrics_by_hand():
    # train: u0 {0}, u1 {0, 1}, u2 {1, 2} -> degrees 2, 2, 1, 0 -> order 0, 1, 2, 3
    # test:  u0 {1, 3}, u1 {2}; u2 has none and is not evaluated
    users = np.array([0, 1, 1, 2, 2, 0, 0, 1])
    items = np.array([0, 0, 1, 1, 2, 1, 3, 2])
    labels = np.array([0, 0, 0, 0, 0, 2, 2, 2])
    m = popularity.popularity_metrics(users, items, labels, split=2, top_ks=(1, 2))
    # u0 ranks [1, 2] (0 is its own): hit, miss; u1 ranks [2, 3]: hit, miss
    assert m["users"] == 2
    assert m["recall@1"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["ndcg@1"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx((1 / (1 + 1 / math.log2(3)) + 1) / 2)


def test_duplicate_training_rows_count_once():
    # item 1 has three rows but one distinct user (u0); item 0 has two users, so item 0 ranks first
    users = np.array([0, 0, 0, 1, 2, 3])
    items = np.array([1, 1, 1, 0, 0, 0])
    labels = np.array([0, 0, 0, 0, 0, 2])
    m = popularity.popularity_metrics(users, items, labels, split=2, top_ks=(1,))
    # u3 (no training items) gets item 0 first, its test item; counting rows would put item 1 first
    assert m["users"] == 1 and m["recall@1"] == 1.0
