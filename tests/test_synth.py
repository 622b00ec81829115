"""synth.py: the seeded demo dataset (format, determinism, 5-core, split, planted signal)."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from mmrec_rearm.data import read_dataset, read_interactions
from mmrec_rearm.synth import (
    INTER_COLUMNS,
    _chronological_split,
    _k_core,
    demo_dataset_yaml,
    generate_demo,
    make_demo_dataset,
    modality_signal,
)


@pytest.fixture(scope="module")
def demo():
    return generate_demo()  # the default size the quickstart uses


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"))


def _file_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_files_and_format(demo_folder, demo):
    assert demo_folder.name == "rearm_demo"
    assert sorted(p.name for p in demo_folder.iterdir()) == [
        "image_feat.npy", "rearm_demo.inter", "text_feat.npy"]
    lines = (demo_folder / "rearm_demo.inter").read_text().splitlines()
    assert lines[0] == "\t".join(INTER_COLUMNS) == "userID\titemID\trating\ttimestamp\tx_label"
    assert len(lines) == 1 + demo.users.size
    first = lines[1].split("\t")
    assert first[0] == "0" and first[2] == "1"  # rows sorted by user; implicit rating 1
    image = np.load(demo_folder / "image_feat.npy")
    text = np.load(demo_folder / "text_feat.npy")
    assert image.dtype == np.float32 and image.shape == (demo.n_items, 64)
    assert text.dtype == np.float32 and text.shape == (demo.n_items, 48)
    np.testing.assert_array_equal(image, demo.features["image"])


def test_read_back_with_read_dataset(demo_folder, demo):
    data = read_dataset(demo_folder)
    assert (data.n_users, data.n_items) == (demo.n_users, demo.n_items)
    assert data.modalities == ("image", "text")
    train = demo.labels == 0
    assert data.n_train == int(train.sum())  # no duplicate pairs in the demo
    dense = data.interactions.toarray()
    assert dense[demo.users[train], demo.items[train]].all()


def test_same_seed_same_bytes_other_seed_differs(tmp_path, demo_folder):
    again = make_demo_dataset(tmp_path / "a")
    assert _file_bytes(again) == _file_bytes(demo_folder)
    other = make_demo_dataset(tmp_path / "b", seed=1)
    b = _file_bytes(other)
    assert all(b[name] != content for name, content in _file_bytes(demo_folder).items())


def test_sizes_and_five_core(demo):
    assert demo.n_users == 2000  # every user draws >= 15 items, none falls below 5
    assert 850 <= demo.n_items <= 1000  # rarely drawn items are filtered out
    per_user = np.bincount(demo.users, minlength=demo.n_users)
    per_item = np.bincount(demo.items, minlength=demo.n_items)
    assert per_user.min() >= 5 and per_item.min() >= 5  # dense ids: every id occurs
    assert 15 <= per_user.mean() <= 25
    pairs = demo.users * demo.n_items + demo.items
    assert np.unique(pairs).size == pairs.size  # sampled without replacement


def test_split_per_user_and_overall(demo):
    for label in (0, 1, 2):
        assert np.bincount(demo.users[demo.labels == label], minlength=demo.n_users).min() >= 1
    share = np.bincount(demo.labels) / demo.labels.size
    np.testing.assert_allclose(share, [0.8, 0.1, 0.1], atol=0.02)
    # chronological within each user: every train row precedes every valid row precedes test
    last = {k: np.full(demo.n_users, -1) for k in (0, 1)}
    first = {k: np.full(demo.n_users, np.iinfo(np.int64).max) for k in (1, 2)}
    for k in (0, 1):
        np.maximum.at(last[k], demo.users[demo.labels == k], demo.timestamps[demo.labels == k])
    for k in (1, 2):
        np.minimum.at(first[k], demo.users[demo.labels == k], demo.timestamps[demo.labels == k])
    assert (last[0] <= first[1]).all() and (last[1] <= first[2]).all()


def test_chronological_split_exact():
    users = np.array([0] * 5 + [1] * 15 + [2] * 20)
    labels = _chronological_split(users)
    np.testing.assert_array_equal(labels[:5], [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(labels[5:20], [0] * 11 + [1, 1, 2, 2])  # 1.5 rounds up to 2
    np.testing.assert_array_equal(labels[20:], [0] * 16 + [1, 1, 2, 2])


def test_k_core_iterates_to_fixpoint():
    # Users 0-2 x items 0-2 form a stable 3-core. Item 9 has 2 rows -> dropped in pass 1; that
    # leaves users 3 and 4 with 2 rows each -> dropped in pass 2 (one pass would keep them).
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4])
    items = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 9, 9, 0, 2])
    u, i, t = _k_core(users, items, np.arange(users.size), core=3)
    np.testing.assert_array_equal(t, np.arange(9))
    np.testing.assert_array_equal(u, users[:9])
    np.testing.assert_array_equal(i, items[:9])


def test_k_core_exact_three_core():
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    items = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    u, i, _ = _k_core(users, items, np.zeros(10), core=3)
    np.testing.assert_array_equal(u, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(i, [0, 1, 2] * 3)


def test_held_out_items_score_higher_under_true_affinity(demo):
    rng = np.random.default_rng(7)
    test = demo.labels == 2
    users, items = demo.users[test], demo.items[test]
    rand = rng.integers(0, demo.n_items, users.size)
    held = demo.affinity(users, items)
    other = demo.affinity(users, rand)
    assert held.mean() - other.mean() > 3.0  # affinity std is about 2.8
    assert (held > other).mean() > 0.85
    # every block drives preferences: each one alone separates held-out from random items
    for part in ("shared", "image", "text"):
        gap = demo.affinity(users, items, part).mean() - demo.affinity(users, rand, part).mean()
        assert gap > 1.0, part


def test_each_modality_carries_unique_signal(demo):
    train = demo.labels == 0
    signal = modality_signal(demo.users[train], demo.items[train], demo.features)
    for m in ("image", "text"):
        assert signal[m]["full"] > 0.05, signal
        assert signal[m]["unique"] > 0.05, signal  # not explained by the other modality


def test_unique_signal_vanishes_when_its_factor_does_not_drive_preferences():
    control = generate_demo(n_users=1000, n_items=500, factor_weights=(1.0, 0.0, 1.0))
    train = control.labels == 0
    signal = modality_signal(control.users[train], control.items[train], control.features)
    assert abs(signal["image"]["unique"]) < 0.02, signal
    assert signal["image"]["full"] > 0.05, signal  # the shared part is still visible
    assert signal["text"]["unique"] > 0.05, signal


def test_small_custom_size_and_feature_dims(tmp_path):
    folder = make_demo_dataset(tmp_path, name="tiny", n_users=60, n_items=40, seed=3,
                               image_dim=8, text_dim=6, per_user=(6, 10))
    inter = read_interactions(folder / "tiny.inter")
    assert np.bincount(inter.users).min() >= 5
    assert np.load(folder / "image_feat.npy").shape == (inter.items.max() + 1, 8)
    assert np.load(folder / "text_feat.npy").shape == (inter.items.max() + 1, 6)


@pytest.mark.parametrize("kwargs,match", [
    ({"per_user": (30, 20)}, r"per_user=\(30, 20\): need 1 <= low <= high <= n_items"),
    ({"n_items": 10}, r"per_user=\(15, 25\): need 1 <= low <= high <= n_items \(10\)"),
    ({"core": 2}, r"core=2: must be >= 3"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_demo(**kwargs)


def test_bad_name(tmp_path):
    with pytest.raises(ValueError, match=r"name='a/b': must be a plain folder name"):
        make_demo_dataset(tmp_path, name="a/b")


def test_dataset_yaml():
    cfg = yaml.safe_load(demo_dataset_yaml("rearm_demo"))
    assert cfg == {
        "USER_ID_FIELD": "userID",
        "ITEM_ID_FIELD": "itemID",
        "TIME_FIELD": "timestamp",
        "filter_out_cod_start_users": True,
        "inter_file_name": "rearm_demo.inter",
        "vision_feature_file": "image_feat.npy",
        "text_feature_file": "text_feat.npy",
        "field_separator": "\t",
    }
