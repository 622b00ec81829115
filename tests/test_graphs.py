"""Homogeneous graph builders (src/mmrec_rearm/graphs/): hand-computed tiny graphs, policies,
errors, and the blocked implementation against a dense brute-force reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from mmrec_rearm import graphs
from mmrec_rearm.graphs import cooccurrence, interest, knn, topk
from mmrec_rearm.errors import DatasetError, GraphParamError
from mmrec_rearm.graphs import (GraphParams, HomogeneousGraphs, build_graphs, choose_user_route,
                                cooccurrence_topk, cosine_knn, empty_graph, fuse_graphs,
                                popular_nodes, user_interest_features, user_interest_knn)

E = math.e
R2 = 1 / math.sqrt(2)


def csr(dense, shape=None) -> sp.csr_matrix:
    return sp.csr_matrix(np.asarray(dense, dtype=np.float32), shape=shape)


def softmax(*values):
    exps = [math.exp(v - max(values)) for v in values]
    return [e / sum(exps) for e in exps]


def assert_canonical(m, n):
    """CSR float32 (n, n), strictly increasing column ids in every row, finite values."""
    assert isinstance(m, sp.csr_matrix)
    assert m.shape == (n, n) and m.dtype == np.float32
    assert np.isfinite(m.data).all()
    for r in range(n):
        idx = m.indices[m.indptr[r]:m.indptr[r + 1]]
        assert np.all(np.diff(idx) > 0), f"row {r} not sorted / has duplicates: {idx}"


# 5 users x 4 items. Shared items: u0-u1 {i0, i1} = 2, u0-u2 {i0} = 1, u1-u2 {i0} = 1;
# u3 (only i3, nobody else has it) and u4 (no training item) have no co-occurring user.
# User degrees 3, 2, 1, 1, 0. Items: i0-i1 {u0, u1} = 2, i0-i2 = i1-i2 = {u0} = 1, i3 alone;
# item degrees 3, 2, 1, 1.
INTER = csr([[1, 1, 1, 0],
             [1, 1, 0, 0],
             [1, 0, 0, 0],
             [0, 0, 0, 1],
             [0, 0, 0, 0]])
# item features (2-d): x0=(1,0) x1=(1,1) x2=(0,1) x3=(-1,0)
FEAT = np.array([[1, 0], [1, 1], [0, 1], [-1, 0]], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# co-occurrence (eq. 1 + softmax), exact by hand


def _popular_row(n, ids, degs):
    row = np.zeros(n)
    total = sum(degs)
    row[ids] = softmax(*[d / total for d in degs])
    return row


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_user_cooccurrence_by_hand(k):
    got = cooccurrence_topk(INTER, k, padding="none", empty="popular")
    assert_canonical(got, 5)
    a, b = softmax(2, 1)  # a neighbour sharing 2 items against one sharing 1
    want = {
        1: [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0]],  # u2: tie u0 / u1 -> lower id
        2: [[0, a, b, 0, 0], [a, 0, b, 0, 0], [.5, .5, 0, 0, 0]],
    }
    want[3] = want[4] = want[2]  # fewer than k neighbours and padding="none": keep them
    pop = {1: ([0], [3]), 2: ([0, 1], [3, 2]), 3: ([0, 1, 2], [3, 2, 1]), 4: ([0, 1, 2, 3], [3, 2, 1, 1])}[k]
    expected = np.array(want[k] + [_popular_row(5, *pop)] * 2)
    np.testing.assert_allclose(got.toarray(), expected, rtol=0, atol=1e-7)


def test_item_cooccurrence_by_hand():
    got = cooccurrence_topk(INTER, 2, side="item")
    assert_canonical(got, 4)
    a, b = softmax(2, 1)
    expected = np.array([[0, a, b, 0], [a, 0, b, 0], [.5, .5, 0, 0], _popular_row(4, [0, 1], [3, 2])])
    np.testing.assert_allclose(got.toarray(), expected, rtol=0, atol=1e-7)


def test_popular_weights_are_softmax_of_degree_fractions():
    ids, w = popular_nodes(np.array([1, 3, 3, 0, 2]), 3)
    assert ids.tolist() == [1, 2, 4]  # degree desc, id asc among equal degrees
    np.testing.assert_allclose(w, softmax(3 / 8, 3 / 8, 2 / 8))
    ids, w = popular_nodes(np.zeros(4, dtype=int), 2)
    assert ids.tolist() == [0, 1] and w.tolist() == [0.5, 0.5]


@pytest.mark.parametrize("empty, row", [("self", [0, 0, 0, 1, 0]), ("none", [0, 0, 0, 0, 0])])
def test_empty_row_policies(empty, row):
    got = cooccurrence_topk(INTER, 2, empty=empty)
    dense = got.toarray()
    np.testing.assert_array_equal(dense[3], row)  # u3: shares no item
    np.testing.assert_array_equal(dense[4], np.roll(row, 1))  # u4: no training item at all
    assert got.nnz == 6 + (2 if empty == "self" else 0)


def test_duplicate_padding_sums_repeats_and_is_seeded():
    # k=3: u0 has 2 neighbours (u1: 2 shared, u2: 1); one padding draw repeats u1 or u2
    pad_u1 = [0, 2 * E / (2 * E + 1), 1 / (2 * E + 1), 0, 0]  # softmax(2, 1, 2), repeats summed
    pad_u2 = [0, E / (E + 2), 2 / (E + 2), 0, 0]              # softmax(2, 1, 1)
    seen = set()
    for seed in range(10):
        first = cooccurrence_topk(INTER, 3, padding="duplicate", seed=seed)
        again = cooccurrence_topk(INTER, 3, padding="duplicate", seed=seed)
        assert_canonical(first, 5)
        np.testing.assert_array_equal(first.toarray(), again.toarray())
        row0 = first.toarray()[0]
        match = [np.allclose(row0, p, atol=1e-7) for p in (pad_u1, pad_u2)]
        assert any(match), row0
        seen.add(match.index(True))
        np.testing.assert_allclose(first.sum(axis=1).A1, 1.0, atol=1e-6)
    assert seen == {0, 1}  # the seed changes the draws


def test_padding_draws_are_fixed_by_seed_and_side():
    highs = np.array([3, 7, 7, 2, 100])
    a = cooccurrence._pad_draws(5, "user", highs)
    assert np.array_equal(a, cooccurrence._pad_draws(5, "user", highs))
    assert ((a >= 0) & (a < highs)).all()
    assert not np.array_equal(cooccurrence._pad_draws(5, "item", np.full(50, 1000)),
                              cooccurrence._pad_draws(5, "user", np.full(50, 1000)))
    # raw PCG64 bits: the same on every numpy version (values pinned once)
    assert cooccurrence._pad_draws(0, "user", np.full(6, 1000)).tolist() == PINNED_DRAWS


PINNED_DRAWS = [636, 269, 40, 16, 813, 912]


def test_candidate_cap_then_padding(monkeypatch):
    # the official code keeps COOC_CANDIDATES neighbours before cutting to k; with a cap of 1 and
    # k=2, u0 keeps only u1 and the padding repeats it: weight 1
    monkeypatch.setattr(cooccurrence, "COOC_CANDIDATES", 1)
    got = cooccurrence_topk(INTER, 2).toarray()
    assert got[0].tolist() == [0, 1, 0, 0, 0]
    got = cooccurrence_topk(INTER, 2, padding="none").toarray()
    assert got[0].tolist() == [0, 1, 0, 0, 0]


def test_cooccurrence_ignores_values_and_duplicates():
    weighted = INTER.copy()
    weighted.data[:] = 7.0
    np.testing.assert_array_equal(cooccurrence_topk(weighted, 2).toarray(),
                                  cooccurrence_topk(INTER, 2).toarray())


# --------------------------------------------------------------------------------------------
# kNN graphs (eq. 2 + degree normalisation), exact by hand

# items x0..x3 as FEAT plus a zero vector x4. cos: x0.x1 = x1.x2 = 1/sqrt2, x0.x2 = x2.x3 = 0,
# x0.x3 = -1, x1.x3 = -1/sqrt2.
FEAT5 = np.vstack([FEAT, [0, 0]]).astype(np.float32)


@pytest.mark.parametrize("k, knn_self, rows", [
    (2, True, {0: {0: 1, 1: R2}, 1: {1: 1, 0: R2}, 2: {2: 1, 1: R2}, 3: {3: 1, 2: 0.0}}),
    (2, False, {0: {1: R2, 2: 0.0}, 1: {0: R2, 2: R2}, 2: {1: R2, 0: 0.0}, 3: {2: 0.0, 1: -R2}}),
    (3, True, {0: {0: 1, 1: R2, 2: 0.0}, 1: {1: 1, 0: R2, 2: R2}, 2: {2: 1, 1: R2, 0: 0.0},
               3: {3: 1, 2: 0.0, 1: -R2}}),
])
def test_item_knn_by_hand(k, knn_self, rows):
    got = cosine_knn(FEAT5, k, knn_self=knn_self)
    assert_canonical(got, 5)
    expected = np.zeros((5, 5))
    for r, entries in rows.items():
        for c, cos in entries.items():
            expected[r, c] = cos / k
    expected[4, 4] = 1 / k  # the zero vector: self-loop only, never anyone's neighbour
    np.testing.assert_allclose(got.toarray(), expected, rtol=0, atol=1e-7)
    # ties (x1: x0 and x2 both 1/sqrt2) go to the lower id; stored zeros count as kept edges
    assert np.diff(got.indptr).tolist() == [k, k, k, k, 1]


# users: u0 = x0+x1+x2 = (2,2), u1 = x0+x1 = (2,1), u2 = x0 = (1,0), u3 = x3 = (-1,0), u4 = none.
C01, C02, C12 = 6 / math.sqrt(40), 1 / math.sqrt(2), 2 / math.sqrt(5)


@pytest.mark.parametrize("route", ["features", "gram", "auto"])
@pytest.mark.parametrize("k, rows", [
    (2, {0: {0: 1, 1: C01}, 1: {1: 1, 0: C01}, 2: {2: 1, 1: C12}, 3: {3: 1, 0: -C02}}),
    (3, {0: {0: 1, 1: C01, 2: C02}, 1: {1: 1, 0: C01, 2: C12}, 2: {2: 1, 1: C12, 0: C02},
         3: {3: 1, 0: -C02, 1: -C12}}),
])
def test_user_interest_knn_by_hand(route, k, rows):
    got = user_interest_knn(INTER, FEAT, k, route=route)
    assert_canonical(got, 5)
    expected = np.zeros((5, 5))
    for r, entries in rows.items():
        for c, cos in entries.items():
            expected[r, c] = cos / k
    expected[4, 4] = 1 / k  # no training item: self-loop only
    np.testing.assert_allclose(got.toarray(), expected, rtol=0, atol=1e-6)


def test_user_interest_features_are_means_and_zero_without_items():
    got = user_interest_features(INTER, FEAT)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [[2 / 3, 2 / 3], [1, .5], [1, 0], [-1, 0], [0, 0]], atol=1e-7)


def test_k_equal_one_with_self_is_identity():
    got = cosine_knn(FEAT, 1)
    np.testing.assert_array_equal(got.toarray(), np.eye(4))


def test_extreme_feature_scales_give_the_same_graph():
    base = user_interest_knn(INTER, FEAT, 2, route="gram").toarray()
    for scale in (1e30, 1e-30):
        for route in ("gram", "features"):
            got = user_interest_knn(INTER, FEAT * np.float32(scale), 2, route=route).toarray()
            np.testing.assert_allclose(got, base, atol=1e-6)
        np.testing.assert_allclose(cosine_knn(FEAT5 * np.float32(scale), 2).toarray(),
                                   cosine_knn(FEAT5, 2).toarray(), atol=1e-6)


# --------------------------------------------------------------------------------------------
# fusion, parameters, the whole build


def test_fuse_graphs_weighted_sum_union_pattern():
    a = csr([[0, 1], [2, 0]])
    b = csr([[0, 3], [0, 4]])
    got = fuse_graphs([a, b], [0.25, 0.75])
    assert_canonical(got, 2)
    np.testing.assert_allclose(got.toarray(), [[0, 2.5], [0.5, 3]])
    assert fuse_graphs([a, None], [1.0, 0.0]).toarray().tolist() == a.toarray().tolist()
    assert fuse_graphs([None], [0.0], n=3).shape == (3, 3)


def test_fuse_graphs_errors():
    with pytest.raises(GraphParamError, match="2 graphs but 1 weights"):
        fuse_graphs([empty_graph(2), empty_graph(2)], [1.0])
    with pytest.raises(GraphParamError, match="every weight is 0"):
        fuse_graphs([empty_graph(2)], [0.0])
    with pytest.raises(GraphParamError, match=r"expected \(2, 2\)"):
        fuse_graphs([empty_graph(2), empty_graph(3)], [0.5, 0.5], n=2)


@pytest.mark.parametrize("n, w, want", [
    (0, 0.2, ()), (1, 0.2, (1.0,)), (2, 0.2, (0.2, 0.8)), (3, 0.2, (0.2, 0.4, 0.4)), (2, 1.0, (1.0, 0.0)),
])
def test_modal_weights_rule(n, w, want):
    got = GraphParams(u_mm_image_weight=w).modal_weights("user", n)
    np.testing.assert_allclose(got, want)
    assert math.isclose(sum(got), 1.0) or n == 0


def test_explicit_modal_weights_and_their_errors():
    p = GraphParams(i_modal_weights=[0.5, 0.25, 0.25])
    assert p.i_modal_weights == (0.5, 0.25, 0.25)
    assert p.modal_weights("item", 3) == (0.5, 0.25, 0.25)
    assert p.modal_weights("user", 3) == (0.2, 0.4, 0.4)
    with pytest.raises(GraphParamError, match="i_modal_weights.*3 weights but the data has 2"):
        p.modal_weights("item", 2)
    with pytest.raises(GraphParamError, match="sum to 0.9"):
        GraphParams(u_modal_weights=(0.5, 0.4))
    with pytest.raises(GraphParamError, match="u_modal_weights"):
        GraphParams(u_modal_weights="0.5,0.5")
    with pytest.raises(GraphParamError, match="side='both'"):
        p.modal_weights("both", 2)


@pytest.mark.parametrize("field, value, match", [
    ("user_knn_k", 0, "user_knn_k=0"), ("item_knn_k", 2.5, "item_knn_k=2.5"), ("user_knn_k", True, "user_knn_k"),
    ("uu_co_weight", 1.5, r"uu_co_weight=1.5.*\[0, 1\]"), ("ii_co_weight", "0.2", "ii_co_weight"),
    ("cooc_padding", "random", "cooc_padding='random'"), ("cooc_empty", "zero", "cooc_empty='zero'"),
    ("knn_self", 1, "knn_self=1"), ("seed", -1, "seed=-1"),
])
def test_graph_params_validation(field, value, match):
    with pytest.raises(GraphParamError, match=match):
        GraphParams(**{field: value})


def test_graph_params_mapping_round_trip_and_normalisation():
    p = GraphParams.from_mapping({"uu_co_weight": 1, "u_modal_weights": [0.5, 0.5], "user_knn_k": np.int64(3)})
    assert p.uu_co_weight == 1.0 and type(p.uu_co_weight) is float
    assert p.u_modal_weights == (0.5, 0.5) and p.user_knn_k == 3 and type(p.user_knn_k) is int
    d = p.to_dict()
    assert d["u_modal_weights"] == [0.5, 0.5] and GraphParams.from_mapping(d) == p
    assert GraphParams().to_dict() == {
        "user_knn_k": 40, "item_knn_k": 10, "u_mm_image_weight": 0.2, "i_mm_image_weight": 0.0,
        "uu_co_weight": 0.4, "ii_co_weight": 0.2, "u_modal_weights": None, "i_modal_weights": None,
        "cooc_padding": "duplicate", "cooc_empty": "popular", "knn_self": True, "seed": 0}
    with pytest.raises(GraphParamError, match="unknown graph parameter.*bogus.*valid names: user_knn_k"):
        GraphParams.from_mapping({"bogus": 1})


def _features(n_mod, n_items=4, seed=3):
    rng = np.random.default_rng(seed)
    return {f"m{i}": rng.standard_normal((n_items, 3 + i)).astype(np.float32) for i in range(n_mod)}


@pytest.mark.parametrize("n_mod", [1, 2, 3])
@pytest.mark.parametrize("u_w, i_w, uu, ii", [(0.2, 0.0, 0.4, 0.2), (0.7, 0.5, 0.9, 0.0), (1.0, 0.3, 0.0, 0.6)])
def test_build_graphs_composes_the_parts(n_mod, u_w, i_w, uu, ii):
    feats = _features(n_mod)
    p = GraphParams(user_knn_k=2, item_knn_k=2, u_mm_image_weight=u_w, i_mm_image_weight=i_w,
                    uu_co_weight=uu, ii_co_weight=ii)
    g = build_graphs(INTER, feats, p)
    assert isinstance(g, HomogeneousGraphs)
    for name in g.GRAPH_NAMES:
        assert_canonical(getattr(g, name), 5 if name.startswith("user") else 4)
        assert name in g.seconds and g.seconds[name] >= 0
    arrays = list(feats.values())
    uw, iw = p.modal_weights("user", n_mod), p.modal_weights("item", n_mod)
    want_interest = sum(w * user_interest_knn(INTER, x, 2).toarray() for w, x in zip(uw, arrays) if w > 0)
    want_semantic = sum(w * cosine_knn(x, 2).toarray() for w, x in zip(iw, arrays) if w > 0)
    want_uco = cooccurrence_topk(INTER, 2).toarray()
    want_ico = cooccurrence_topk(INTER, 2, side="item").toarray()
    np.testing.assert_allclose(g.user_cooccurrence.toarray(), want_uco if uu > 0 else 0, atol=1e-6)
    np.testing.assert_allclose(g.item_cooccurrence.toarray(), want_ico if ii > 0 else 0, atol=1e-6)
    np.testing.assert_allclose(g.user_interest.toarray(), want_interest if uu < 1 else 0, atol=1e-6)
    np.testing.assert_allclose(g.item_semantic.toarray(), want_semantic if ii < 1 else 0, atol=1e-6)
    np.testing.assert_allclose(g.user_homogeneous.toarray(),
                               uu * want_uco + (1 - uu) * want_interest, atol=1e-6)
    np.testing.assert_allclose(g.item_homogeneous.toarray(),
                               ii * want_ico + (1 - ii) * want_semantic, atol=1e-6)
    # every non-empty homogeneous row is a convex mix of rows summing to 1 (co) and kNN rows
    assert g.user_cooccurrence.nnz == 0 or np.allclose(g.user_cooccurrence.sum(axis=1).A1, 1, atol=1e-6)


def test_build_graphs_by_hand_homogeneous_row():
    # user 0, Baby weights: 0.4 * co-occurrence + 0.6 * (0.2 * image kNN + 0.8 * text kNN), k=2
    text = np.array([[0, 1], [0, 1], [1, 0], [1, 0]], dtype=np.float32)  # u0=(1,2) u1=(0,2) u2=(0,1)
    g = build_graphs(INTER, {"image": FEAT, "text": text}, GraphParams(user_knn_k=2, item_knn_k=2))
    a, b = softmax(2, 1)
    co = np.array([0, a, b, 0, 0])
    image = np.array([1, C01, 0, 0, 0]) / 2
    text_row = np.array([1, 2 / math.sqrt(5), 0, 0, 0]) / 2  # u1 and u2 tie at 2/sqrt5 -> u1
    np.testing.assert_allclose(g.user_homogeneous.toarray()[0],
                               0.4 * co + 0.6 * (0.2 * image + 0.8 * text_row), atol=1e-6)


def test_zero_weights_skip_the_work(monkeypatch):
    calls = []
    real_cooc, real_feat, real_gram = (cooccurrence.cooccurrence_topk, knn.item_knn_from_features,
                                       knn.item_knn_from_gram)

    def spy(name, real):
        def wrapped(*args, **kwargs):
            calls.append((name, kwargs.get("side"), args[-2] if name != "cooc" else None))
            return real(*args, **kwargs)
        return wrapped

    def refuse(*args, **kwargs):
        raise AssertionError("user interest graph must not be built when uu_co_weight == 1")

    monkeypatch.setattr(cooccurrence, "cooccurrence_topk", spy("cooc", real_cooc))
    monkeypatch.setattr(knn, "item_knn_from_features", spy("item", real_feat))
    monkeypatch.setattr(knn, "item_knn_from_gram", spy("item", real_gram))
    monkeypatch.setattr(interest, "user_knn_from_features", refuse)
    monkeypatch.setattr(interest, "user_knn_from_gram", refuse)
    p = GraphParams(user_knn_k=2, item_knn_k=2, uu_co_weight=1.0, ii_co_weight=0.0, i_mm_image_weight=0.0)
    g = build_graphs(INTER, _features(2), p)
    assert g.user_interest.shape == (5, 5) and g.user_interest.nnz == 0
    assert g.item_cooccurrence.shape == (4, 4) and g.item_cooccurrence.nnz == 0
    assert g.item_semantic.nnz > 0
    # only the user co-occurrence and the second modality's item kNN (the first has weight 0)
    assert calls == [("cooc", "user", None), ("item", None, "item_semantic[m1]")]


def test_build_graphs_errors():
    p = GraphParams(user_knn_k=5, item_knn_k=2)
    with pytest.raises(GraphParamError, match=r"user_knn_k=5 but there are only 5 nodes.*<= 4"):
        build_graphs(INTER, {"a": FEAT}, p)
    with pytest.raises(GraphParamError, match=r"item_knn_k=4 but there are only 4 nodes"):
        build_graphs(INTER, {"a": FEAT}, GraphParams(user_knn_k=2, item_knn_k=4))
    small = GraphParams(user_knn_k=2, item_knn_k=2)
    bad = FEAT.copy()
    bad[2, 1] = np.nan
    with pytest.raises(DatasetError, match=r"features\[image\].*non-finite.*row 2"):
        build_graphs(INTER, {"image": bad}, small)
    with pytest.raises(DatasetError, match=r"features\[image\].*non-finite"):
        build_graphs(INTER, {"image": np.full((4, 2), 1e300)}, small)  # overflows float32
    with pytest.raises(DatasetError, match=r"features\[image\]: shape \(3, 2\), expected \(4, d\)"):
        build_graphs(INTER, {"image": FEAT[:3]}, small)
    with pytest.raises(GraphParamError, match="no feature modality"):
        build_graphs(INTER, {}, small)
    with pytest.raises(GraphParamError, match="u_modal_weights.*1 weights but the data has 2"):
        build_graphs(INTER, _features(2), GraphParams(user_knn_k=2, item_knn_k=2, u_modal_weights=(1.0,)))
    with pytest.raises(GraphParamError, match="expected GraphParams"):
        build_graphs(INTER, {"a": FEAT}, {"user_knn_k": 2})
    # co-occurrence only: no features needed
    g = build_graphs(INTER, {}, GraphParams(user_knn_k=2, item_knn_k=2, uu_co_weight=1.0, ii_co_weight=1.0))
    assert g.user_homogeneous.nnz > 0 and g.item_semantic.nnz == 0
    with pytest.raises(GraphParamError, match=r"k=4 but there are only 4"):
        cosine_knn(FEAT, 4)


def test_progress_reports_blocks():
    messages = []
    user_interest_knn(INTER, FEAT, 2, route="gram", block_size=2, progress=messages.append)
    assert any("block 3/3" in m for m in messages)


def test_route_choice():
    assert choose_user_route(19445, 7050, 118551, 4096) == "gram"        # Baby image
    assert choose_user_route(19445, 7050, 118551, 384) == "features"     # Baby text
    assert choose_user_route(10, 30000, 100, 4096) == "features"         # G would need 3.6 GB


# --------------------------------------------------------------------------------------------
# blocked implementation against a dense brute force (n <= 200)


def _dense_knn(vectors, k, knn_self):
    """Reference: float64 cosines, and each row's k-th best cosine among the other non-zero rows
    (the (k-1)-th with knn_self), ranked by (cos desc, id asc)."""
    v = vectors.astype(np.float64)
    norms = np.linalg.norm(v, axis=1)
    zero = norms == 0
    unit = np.divide(v, norms[:, None], out=np.zeros_like(v), where=~zero[:, None])
    cos = unit @ unit.T
    n = len(v)
    kth = np.full(n, -np.inf)
    for r in np.flatnonzero(~zero):
        others = sorted((c for c in range(n) if c != r and not zero[c]), key=lambda c: (-cos[r, c], c))
        take = others[:k - 1] if knn_self else others[:k]
        if take:
            kth[r] = cos[r, take[-1]]
    return cos, kth, zero


def _assert_knn_matches(got, vectors, k, knn_self):
    """Same rows as the dense reference, up to float32 rounding at exact near-ties."""
    cos, kth, zero = _dense_knn(vectors, k, knn_self)
    g = got.toarray()
    n = len(vectors)
    for r in range(n):
        if zero[r]:
            assert got.indices[got.indptr[r]:got.indptr[r + 1]].tolist() == [r]
            continue
        cols = got.indices[got.indptr[r]:got.indptr[r + 1]]
        assert cols.size == k
        others = [c for c in cols if c != r]
        assert all(cos[r, c] >= kth[r] - 1e-5 for c in others), r
        np.testing.assert_allclose(g[r, others], cos[r, others] / k, atol=2e-6)
        if knn_self:
            assert g[r, r] == np.float32(1 / k)
        else:
            assert r not in cols
    by_column = got.tocsc()
    for c in np.flatnonzero(zero):  # a zero vector is nobody's neighbour
        assert by_column.indices[by_column.indptr[c]:by_column.indptr[c + 1]].tolist() == [c]


@pytest.fixture
def small_groups(monkeypatch):
    # few candidate groups so the group filter works on multi-row groups plus a tail
    monkeypatch.setattr(topk, "_GROUPS", 8)


@pytest.mark.parametrize("k, knn_self", [(1, False), (5, True), (5, False), (12, True)])
def test_item_knn_blocked_matches_dense(small_groups, k, knn_self):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((157, 6)).astype(np.float32)
    x[[3, 40]] = 0  # zero vectors
    got = cosine_knn(x, k, knn_self=knn_self, block_size=13)
    assert_canonical(got, 157)
    _assert_knn_matches(got, x, k, knn_self)
    whole = cosine_knn(x, k, knn_self=knn_self)
    np.testing.assert_allclose(got.toarray(), whole.toarray(), atol=1e-6)


@pytest.mark.parametrize("route", ["features", "gram"])
@pytest.mark.parametrize("k, knn_self", [(4, True), (7, False)])
def test_user_knn_blocked_matches_dense(small_groups, route, k, knn_self):
    rng = np.random.default_rng(5)
    inter = (rng.random((131, 90)) < 0.05).astype(np.float32)
    inter[[0, 17, 18]] = 0  # users without training items
    x = rng.standard_normal((90, 5)).astype(np.float32)
    got = user_interest_knn(sp.csr_matrix(inter), x, k, knn_self=knn_self, route=route, block_size=9)
    assert_canonical(got, 131)
    _assert_knn_matches(got, inter.astype(np.float64) @ x.astype(np.float64), k, knn_self)


@pytest.mark.parametrize("tile", [1, 7, 40, 157])
@pytest.mark.parametrize("k, knn_self", [(1, False), (5, True), (12, False)])
def test_item_knn_tiled_matches_dense_and_unblocked(small_groups, tile, k, knn_self):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((157, 6)).astype(np.float32)
    x[[3, 40]] = 0  # zero vectors
    got = cosine_knn(x, k, knn_self=knn_self, tile_size=tile)
    assert_canonical(got, 157)
    _assert_knn_matches(got, x, k, knn_self)
    whole = cosine_knn(x, k, knn_self=knn_self)  # one column block over all rows
    assert np.array_equal(got.indptr, whole.indptr) and np.array_equal(got.indices, whole.indices)
    np.testing.assert_allclose(got.data, whole.data, atol=1e-6)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tile", [1, 9, 131])
@pytest.mark.parametrize("k, knn_self", [(4, True), (7, False)])
def test_user_knn_tiled_matches_dense_and_unblocked(small_groups, monkeypatch, stream, tile, k, knn_self):
    if stream:  # as if the user vectors did not fit: each tile is summed again from R
        monkeypatch.setattr(interest, "DENSE_MAX_BYTES", 0)
    rng = np.random.default_rng(5)
    inter = (rng.random((131, 90)) < 0.05).astype(np.float32)
    inter[[0, 17, 18]] = 0  # users without training items
    x = rng.standard_normal((90, 5)).astype(np.float32)
    got = user_interest_knn(sp.csr_matrix(inter), x, k, knn_self=knn_self, route="features", tile_size=tile)
    assert_canonical(got, 131)
    _assert_knn_matches(got, inter.astype(np.float64) @ x.astype(np.float64), k, knn_self)
    whole = user_interest_knn(sp.csr_matrix(inter), x, k, knn_self=knn_self, route="features")
    assert np.array_equal(got.indptr, whole.indptr) and np.array_equal(got.indices, whole.indices)
    np.testing.assert_allclose(got.data, whole.data, atol=1e-6)


def test_tiles_start_beyond_narrow_column_blocks():
    assert not knn.use_tiles(65_536, None, None)  # a ~64 MB column block still holds 256 columns
    assert knn.use_tiles(65_537, None, None)
    assert not knn.use_tiles(10 ** 6, 16, None)  # an explicit column block wins
    assert knn.use_tiles(10, None, 4)


@pytest.mark.parametrize("kk", [1, 4, 10, 60])
def test_topk_rows_and_columns_exact_with_ties_and_infinities(small_groups, kk):
    rng = np.random.default_rng(3)
    block = rng.integers(-3, 4, size=(37, 53)).astype(np.float32)  # many exact ties
    block[5, :] = -np.inf  # a row without finite values
    block[9, 3:] = -np.inf  # a row with three
    block[:, 7] = -np.inf
    want = []
    for r in range(37):
        finite = [c for c in range(53) if np.isfinite(block[r, c])]
        best = sorted(finite, key=lambda c: (-block[r, c], c))[:kk]
        want += [(r, c, float(block[r, c])) for c in best]
    rows, cols, vals = topk.topk_rows(block, kk)
    assert list(zip(rows.tolist(), cols.tolist(), vals.tolist())) == want
    cols_t, rows_t, vals_t = topk.topk_columns(np.ascontiguousarray(block.T), kk)
    assert list(zip(cols_t.tolist(), rows_t.tolist(), vals_t.tolist())) == want


def _dense_cooc(inter, k, empty):
    """Reference co-occurrence with padding="none": python sort per row."""
    b = (inter != 0).astype(np.int64)
    counts = b @ b.T
    np.fill_diagonal(counts, 0)
    n = len(b)
    out = np.zeros((n, n))
    deg = b.sum(axis=1)
    for r in range(n):
        nb = sorted((c for c in range(n) if counts[r, c] > 0), key=lambda c: (-counts[r, c], c))
        nb = nb[:min(k, graphs.COOC_CANDIDATES)]
        if nb:
            out[r, nb] = softmax(*counts[r, nb])
        elif empty == "popular":
            pop = sorted(range(n), key=lambda c: (-deg[c], c))[:k]
            out[r, pop] = softmax(*(deg[pop] / deg[pop].sum()))
        elif empty == "self":
            out[r, r] = 1
    return out


@pytest.mark.parametrize("side", ["user", "item"])
@pytest.mark.parametrize("k, empty", [(3, "popular"), (10, "self"), (25, "none")])
def test_cooccurrence_blocked_matches_dense(side, k, empty):
    rng = np.random.default_rng(2)
    inter = (rng.random((120, 70)) < 0.04).astype(np.float32)
    inter[:, :3] = (rng.random((120, 3)) < 0.5)  # popular items: many counts of 2 and more
    got = cooccurrence_topk(sp.csr_matrix(inter), k, side=side, padding="none", empty=empty, block_size=7)
    dense = inter if side == "user" else inter.T
    assert_canonical(got, len(dense))
    np.testing.assert_allclose(got.toarray(), _dense_cooc(dense, k, empty), atol=1e-6)
    whole = cooccurrence_topk(sp.csr_matrix(inter), k, side=side, padding="none", empty=empty)
    np.testing.assert_array_equal(got.toarray(), whole.toarray())
    # duplicate padding: rows still sum to 1, support stays inside the co-occurring nodes
    padded = cooccurrence_topk(sp.csr_matrix(inter), k, side=side, empty=empty, block_size=7, seed=4)
    sums = padded.sum(axis=1).A1
    nonempty = np.diff(padded.indptr) > 0
    np.testing.assert_allclose(sums[nonempty], 1.0, atol=1e-6)
    assert ((padded.toarray() > 0) <= (got.toarray() > 0)).all()
    np.testing.assert_array_equal(
        padded.toarray(),
        cooccurrence_topk(sp.csr_matrix(inter), k, side=side, empty=empty, seed=4).toarray())


@pytest.mark.parametrize("chunk_pairs", [1, 5, 40, 1 << 22])
def test_user_norms_from_gram_in_bounded_chunks(chunk_pairs):
    rng = np.random.default_rng(8)
    inter = (rng.random((30, 12)) < 0.3).astype(np.float32)
    inter[4] = 1  # a heavy user: 144 pairs
    inter[9] = 0
    x = rng.standard_normal((12, 3))
    gram = (x @ x.T).astype(np.float32)
    got = interest._quadratic_forms(sp.csr_matrix(inter), gram, chunk_pairs=chunk_pairs)
    y = inter.astype(np.float64) @ x
    np.testing.assert_allclose(got, (y * y).sum(axis=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, error, match", [
    (lambda: cooccurrence_topk(INTER, 2, side="both"), GraphParamError, "side='both'"),
    (lambda: cooccurrence_topk(INTER, 2, padding="random"), GraphParamError, "padding='random'"),
    (lambda: cooccurrence_topk(INTER, 2, empty="zero"), GraphParamError, "empty='zero'"),
    (lambda: cooccurrence_topk(INTER, 0), GraphParamError, "user_knn_k=0"),
    (lambda: cooccurrence_topk(INTER, 4, side="item"), GraphParamError, "item_knn_k=4 but there are only 4"),
    (lambda: cooccurrence_topk(np.ones(3), 1), DatasetError, r"2-D \(n_users, n_items\)"),
    (lambda: cooccurrence_topk(csr([[np.nan, 1], [1, 0]]), 1), DatasetError, "NaN or inf"),
    (lambda: cosine_knn(FEAT, 1.5), GraphParamError, "k=1.5"),
    (lambda: cosine_knn(FEAT.astype(bool), 1), DatasetError, "dtype bool"),
    (lambda: user_interest_knn(INTER, FEAT, 2, route="fast"), GraphParamError, "route='fast'"),
    (lambda: user_interest_knn(INTER, FEAT.T, 2), DatasetError, r"shape \(2, 4\), expected \(4, d\)"),
    (lambda: build_graphs(INTER, FEAT, GraphParams(user_knn_k=2, item_knn_k=2)), DatasetError,
     "not a single array"),
    (lambda: GraphParams().modal_weights("user", -1), GraphParamError, "n_modalities=-1"),
    (lambda: GraphParams.from_mapping([("user_knn_k", 3)]), GraphParamError, "must be a mapping"),
])
def test_error_paths(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_list_of_features_is_modality_order():
    p = GraphParams(user_knn_k=2, item_knn_k=2, i_mm_image_weight=1.0)
    by_list = build_graphs(INTER, [FEAT, FEAT * np.float32([1, -1])], p)
    by_map = build_graphs(INTER, {"image": FEAT, "text": FEAT * np.float32([1, -1])}, p)
    for name in HomogeneousGraphs.GRAPH_NAMES:
        np.testing.assert_array_equal(getattr(by_list, name).toarray(), getattr(by_map, name).toarray())
    np.testing.assert_array_equal(by_list.item_semantic.toarray(), cosine_knn(FEAT, 2).toarray())


def test_cooccurrence_counts_topk_exact_counts_order_and_keep():
    # users 0..3 over items 0..3; common items: (0,1)=2, (0,2)=1, (2,3)=1, every other pair 0
    r = sp.csr_matrix(np.array([[1, 1, 1, 0],
                                [1, 1, 0, 0],
                                [0, 0, 1, 1],
                                [0, 0, 0, 1]], dtype=np.float32))
    rows, cols, counts = graphs.cooccurrence_counts_topk(r, 2)
    assert rows.tolist() == [0, 0, 1, 2, 2, 3]  # user 1 has a single co-occurring user
    assert cols.tolist() == [1, 2, 0, 0, 3, 2]  # count desc, then id asc; self never listed
    assert counts.tolist() == [2, 1, 2, 1, 1, 1]
    rows, cols, counts = graphs.cooccurrence_counts_topk(r, 1, side="item")  # common users of items
    assert list(zip(rows.tolist(), cols.tolist(), counts.tolist())) == [(0, 1, 2), (1, 0, 2), (2, 0, 1), (3, 2, 1)]
    with pytest.raises(GraphParamError, match="keep=0"):
        graphs.cooccurrence_counts_topk(r, 0)
