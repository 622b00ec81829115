"""The graph builders' version ties the cache key to their output, not to their source text.

``graphs.BUILDER_VERSION`` is part of every cache key. ``GOLDEN`` below records, for every
version ever released, the sha256 of the graphs built from one fixed tiny dataset under several
parameter settings and through every route (blocked and whole, feature and Gram). If a change
alters any of those graphs, the first test fails until BUILDER_VERSION is bumped and its new
digest is added here, so a change of output cannot ship under an old key. A change that keeps
the output (a refactor, a comment) keeps the version and therefore every stored graph.

The fixture is exact in float32 under any summation order: features are small integers, every
item and every user's feature sum has a squared norm that is 0 or a power of 4, so every norm
is a power of two and every cosine is a dyadic rational computed without rounding. The digest
is therefore the same on every BLAS, CPU and numpy version, ties included.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from mmrec_rearm import cache, graphs
from mmrec_rearm.data import TrainingData
from mmrec_rearm.graphs import (GraphParams, build_graphs, cooccurrence, cosine_knn, cooccurrence_topk, interest,
                                user_interest_knn)

REPO_ROOT = Path(__file__).resolve().parents[1]

#: BUILDER_VERSION -> digest of reference_outputs(). Append a new entry for every bump; never edit
#: an old one.
GOLDEN = {
    1: "72a432e6b7f06e00110fba860e105fa593f33e59f2f27ef81a833fc3dc422552",
}

# 29 users x 18 items. Items 2, 8, 9, 12, 14, 15 have no training user; item 5's features are zero;
# item 16 = -item 3 in both modalities, so user 15 ({3, 16}) has a zero interest; user 7 has no
# training item; several users share the same item set (exact ties).
PAIRS = [(0, 7), (0, 10), (1, 0), (1, 5), (1, 17), (2, 7), (2, 10), (3, 0), (3, 17), (4, 0), (4, 3),
         (4, 5), (4, 17), (5, 3), (5, 6), (5, 11), (6, 4), (6, 5), (8, 0), (8, 17), (9, 0), (9, 3),
         (9, 6), (9, 11), (10, 1), (10, 5), (11, 5), (11, 10), (12, 4), (12, 5), (13, 1), (13, 5),
         (14, 0), (14, 17), (15, 3), (15, 16), (16, 10), (16, 17), (17, 0), (17, 17), (18, 4), (18, 5),
         (19, 1), (19, 5), (20, 1), (20, 5), (21, 0), (21, 17), (22, 1), (22, 5), (23, 0), (23, 17),
         (24, 0), (24, 17), (25, 5), (25, 17), (26, 4), (27, 13), (28, 7)]
N_USERS, N_ITEMS = 29, 18
FEATURES_A = [[0, 2, 2, -2, 0, 2], [2, 1, 0, 1, 1, 3], [1, 0, -1, -1, 0, 1], [-2, 0, 2, 2, 0, 2],
              [0, 0, 0, -1, 0, 0], [0, 0, 0, 0, 0, 0], [-2, -2, -2, 0, -2, 0], [1, 0, 0, -1, -1, 1],
              [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, -1], [-2, 2, 0, 2, 0, 2], [2, 0, -2, -2, 0, -2],
              [-1, -1, 2, -3, 0, 1], [0, -2, 2, 0, 2, -2], [0, 0, 1, -1, -1, 1], [0, 1, -1, 0, -1, -1],
              [2, 0, -2, -2, 0, -2], [2, 0, -2, 0, 2, -2]]
FEATURES_B = [[0, 0, -2, 0], [-1, -1, -1, -1], [1, 1, -1, 1], [-1, -1, 1, -1], [-1, 1, -1, -1],
              [2, 0, 0, 0], [0, 0, 0, 1], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 1, 0], [-1, -1, -1, 1],
              [0, 0, 0, 1], [0, 0, 0, 2], [1, 1, -1, 1], [0, 0, -2, 0], [1, -1, -1, 1], [1, 1, -1, 1],
              [-1, 1, 1, -1]]

SETTINGS = [
    GraphParams(user_knn_k=4, item_knn_k=3),
    GraphParams(user_knn_k=5, item_knn_k=4, knn_self=False, cooc_padding="none", cooc_empty="self",
                u_mm_image_weight=0.7, i_mm_image_weight=0.5, seed=3),
    GraphParams(user_knn_k=6, item_knn_k=5, cooc_empty="none", uu_co_weight=1.0, ii_co_weight=0.0,
                i_mm_image_weight=1.0, seed=11),
    GraphParams(user_knn_k=3, item_knn_k=2, u_modal_weights=(0.25, 0.75), i_modal_weights=(0.6, 0.4),
                uu_co_weight=0.0, ii_co_weight=1.0),
]


def interactions() -> sp.csr_matrix:
    users, items = np.array(PAIRS).T
    return sp.csr_matrix((np.ones(len(PAIRS), np.float32), (users, items)), shape=(N_USERS, N_ITEMS))


def features() -> dict:
    return {"image": np.array(FEATURES_A, np.float32), "text": np.array(FEATURES_B, np.float32)}


def reference_outputs():
    """(label, graph) for every graph the builders make from the fixture, in a fixed order."""
    r, feats = interactions(), features()
    out = []
    for s, params in enumerate(SETTINGS):
        built = build_graphs(r, feats, params)
        out += [(f"build{s}/{name}", getattr(built, name)) for name in built.GRAPH_NAMES]
    for name, x in feats.items():
        for knn_self in (True, False):
            for block in (None, 2):
                tag = f"{name}/self={knn_self}/block={block}"
                out.append((f"item/{tag}", cosine_knn(x, 4, knn_self=knn_self, block_size=block)))
                for route in ("features", "gram"):
                    out.append((f"user/{route}/{tag}", user_interest_knn(
                        r, x, 5, knn_self=knn_self, route=route, block_size=block)))
    for side, k in (("user", 7), ("item", 4)):
        for block in (None, 2):
            for padding in ("duplicate", "none"):
                out.append((f"cooc/{side}/{padding}/block={block}", cooccurrence_topk(
                    r, k, side=side, padding=padding, seed=5, block_size=block)))
    return out


def digest(outputs) -> str:
    h = hashlib.sha256()
    for label, m in outputs:
        m = sp.csr_matrix(m)
        h.update(json.dumps([label, list(m.shape)]).encode())
        for arr in (m.indptr.astype("<i8"), m.indices.astype("<i8"), m.data.astype("<f4")):
            h.update(len(arr).to_bytes(8, "little") + arr.tobytes())
    return h.hexdigest()


def test_builder_version_matches_golden_output():
    got = digest(reference_outputs())
    assert graphs.BUILDER_VERSION == max(GOLDEN), "BUILDER_VERSION must be the newest entry of GOLDEN"
    assert len(set(GOLDEN.values())) == len(GOLDEN), "two versions with the same output"
    assert got == GOLDEN[graphs.BUILDER_VERSION], (
        f"the graph builders' output changed (digest {got}). If the change is intended, bump "
        f"BUILDER_VERSION in src/mmrec_rearm/graphs/__init__.py to {graphs.BUILDER_VERSION + 1} and add "
        f"{graphs.BUILDER_VERSION + 1}: \"{got}\" to GOLDEN in this file, so stored graphs are rebuilt; "
        "otherwise the change broke the builders.")


def test_fixture_is_exact_in_float32():
    r = interactions().toarray()
    powers = {0} | {4 ** a for a in range(12)}
    for x in features().values():
        squares = [int(v) for v in (x.astype(np.int64) ** 2).sum(axis=1)]
        sums = r.astype(np.int64) @ x.astype(np.int64)
        assert set(squares) <= powers
        assert set(int(v) for v in (sums ** 2).sum(axis=1)) <= powers


def test_every_route_gives_the_same_bits():
    by_label = dict(reference_outputs())
    for name in features():
        for knn_self in (True, False):
            variants = [by_label[f"user/{route}/{name}/self={knn_self}/block={b}"]
                        for route in ("features", "gram") for b in (None, 2)]
            for other in variants[1:]:
                assert digest([("g", other)]) == digest([("g", variants[0])])


@pytest.mark.parametrize("tile", [1, 4, 7, 29])
def test_square_tiles_give_the_golden_bits(monkeypatch, tile):
    """The tile routes used beyond 65,536 nodes reproduce the pinned graphs bit for bit."""
    by_label = dict(reference_outputs())
    r = interactions()
    for name, x in features().items():
        for knn_self in (True, False):
            want_item = by_label[f"item/{name}/self={knn_self}/block=None"]
            want_user = by_label[f"user/features/{name}/self={knn_self}/block=None"]
            got_item = cosine_knn(x, 4, knn_self=knn_self, tile_size=tile)
            assert digest([("g", got_item)]) == digest([("g", want_item)])
            for limit in (interest.DENSE_MAX_BYTES, 0):  # user vectors kept whole / summed per tile
                monkeypatch.setattr(interest, "DENSE_MAX_BYTES", limit)
                got_user = user_interest_knn(r, x, 5, knn_self=knn_self, route="features", tile_size=tile)
                assert digest([("g", got_user)]) == digest([("g", want_user)])


def test_an_output_change_fails_the_golden_test_and_a_bump_changes_the_key(monkeypatch):
    base = digest(reference_outputs())
    monkeypatch.setattr(cooccurrence, "COOC_CANDIDATES", 2)  # as if the official candidate cap changed
    assert digest(reference_outputs()) != base
    monkeypatch.undo()
    data = TrainingData(n_users=N_USERS, n_items=N_ITEMS, interactions=interactions(), features=features(),
                        source={})
    key = cache.fingerprint(data, SETTINGS[0])
    monkeypatch.setattr(graphs, "BUILDER_VERSION", graphs.BUILDER_VERSION + 1)
    assert cache.fingerprint(data, SETTINGS[0]) != key


_PROBE = """
import json, sys
sys.path.insert(0, {src!r})
sys.path.insert(0, {tests!r})
import mmrec_rearm
assert mmrec_rearm.__file__.startswith({src!r}), mmrec_rearm.__file__
import test_graph_version as t
from mmrec_rearm import cache
from mmrec_rearm.data import TrainingData
data = TrainingData(n_users=t.N_USERS, n_items=t.N_ITEMS, interactions=t.interactions(),
                    features=t.features(), source={{}})
print(json.dumps({{"key": cache.fingerprint(data, t.SETTINGS[0]), "digest": t.digest(t.reference_outputs())}}))
"""


def _probe(src: Path) -> dict:
    code = _PROBE.format(src=str(src), tests=str(REPO_ROOT / "tests"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_refactor_keeps_every_key(tmp_path):
    """Comments, docstrings and a moved helper change the builder's source but not one key."""
    original = tmp_path / "original"
    edited = tmp_path / "edited"
    for copy in (original, edited):
        shutil.copytree(REPO_ROOT / "src" / "mmrec_rearm", copy / "mmrec_rearm",
                        ignore=shutil.ignore_patterns("__pycache__"))
    package = edited / "mmrec_rearm" / "graphs"
    for module in sorted(package.glob("*.py")):
        text = module.read_text()
        module.write_text('"""Reworded docstring."""\n# a comment\n' + text.split('"""', 2)[2] + "\n# end\n")
    knn = package / "knn.py"
    knn.write_text(knn.read_text().replace("_topk_columns", "_best_per_column"))
    before, after = _probe(original), _probe(edited)
    assert after == before
