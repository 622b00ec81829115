"""Parity with the official REARM code (github MrShouxingMa/REARM) on a real TikTok subset.

Runs only when a runnable clone of the official code is found (see `official_src` in
conftest.py and docs/testing.md); the official modules are imported from that clone at run
time, in isolation from other packages named `utils` / `model` / `trainer`.

Data: 600 consecutive TikTok users (ids 4200..4799) with all their interactions, and the items
they touch (re-indexed in id order) with the real 128-d image and audio features. The window
holds a user without training items (4371), items without training interactions, users and
items with >= k, fewer than k and no co-occurring neighbours, and duplicated audio vectors
(similarity ties), while keeping the official O(n^2) Python builders at about 2 s.

(a) the four graphs and the fused graphs equal the official construction (tie-aware; one known
    difference, the user popularity fallback, is pinned by its own test);
(b) with the official weights loaded into our model and both models on our graphs, eval-mode
    scores and each loss term agree within 1e-5 (float64; float32 relative to the magnitude).

Run with -s to see the largest differences; they are also recorded as test properties.
docs/testing.md explains every check.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from mmrec_rearm.graphs import GraphParams, build_graphs  # noqa: E402
from official_harness import (  # noqa: E402
    SCORED_USERS, SETTINGS, OfficialSide, Setting, Subset, _quiet_official, as_float64,
    build_official, build_official_model, graph_as_csr, official_loss_terms, official_scores, our_config,
    to_csr, training_batch, write_mmrec_features, write_official_dataset)

VALUE_TOL = 1e-6   # graph values
SIM_TIE_TOL = 1e-6  # similarities closer than this to the k-th one count as ties
MODEL_TOL = 1e-5   # scores and loss terms


def official_user_knn_on_trained_users(official, side: OfficialSide, setting: Setting) -> dict:
    """The official user-interest kNN construction applied to the users that have training
    items only (embedded back into the full user index space).

    On the whole subset the official interest vector of a user without training items is
    0/0 = NaN, and NaN sorts above every similarity in torch.topk, so that user lands in every
    row of the official graph. Restricting the official builder to trained users gives the
    graph the official code produces on data where every user has training items (Baby,
    Sports, Clothing)."""
    dataset = side.dataset
    k = setting.graph["user_knn_k"]
    interest = {"image": dataset.u_v_interest, "audio": dataset.u_t_interest}
    trained = np.flatnonzero(~torch.isnan(interest["image"]).any(dim=1).numpy())
    embed = sp.csr_matrix((np.ones(len(trained)), (trained, np.arange(len(trained)))),
                          shape=(dataset.n_users, len(trained)))
    out = {"trained_users": trained}
    with _quiet_official():
        for name, features in interest.items():
            local = to_csr(official.helper.get_knn_adj_mat(features[trained], k, torch.device("cpu")))
            out[name] = (embed @ local @ embed.T).tocsr()
        out["similarity/image"] = _cosine(interest["image"])
        out["similarity/audio"] = _cosine(interest["audio"])
    return out


def _cosine(features) -> np.ndarray:
    """Cosine similarity as the official code computes it (float32 torch), for tie detection."""
    unit = torch.nn.functional.normalize(features, dim=1)
    return torch.mm(unit, unit.T).double().numpy()


def build_ours(subset: Subset, setting: Setting) -> dict:
    """Our six graphs for `setting`, plus the per-modality semantic / interest graphs
    (obtained through explicit one-hot modality weights)."""
    params = GraphParams(**setting.graph)
    graphs = build_graphs(subset.train, subset.features, params)
    out = {name: getattr(graphs, name).tocsr().astype(np.float64) for name in graphs.GRAPH_NAMES}
    for position, name in enumerate(subset.features):
        one_hot = tuple(1.0 if i == position else 0.0 for i in range(len(subset.features)))
        single = build_graphs(subset.train, subset.features,
                              dataclasses.replace(params, u_modal_weights=one_hot,
                                                  i_modal_weights=one_hot))
        out[f"user_interest/{name}"] = single.user_interest.tocsr().astype(np.float64)
        out[f"item_semantic/{name}"] = single.item_semantic.tocsr().astype(np.float64)
    return out


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def subset(tiktok_subset) -> Subset:
    return tiktok_subset


@pytest.fixture(scope="module")
def official_workdir(subset, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rearm_official_run")
    write_official_dataset(subset, root)
    return root


@pytest.fixture(scope="module", params=SETTINGS, ids=lambda s: s.name)
def setting(request) -> Setting:
    return request.param


@pytest.fixture(scope="module")
def official_side(official, setting, official_workdir) -> OfficialSide:
    return build_official(official, setting, official_workdir)


@pytest.fixture(scope="module")
def ours(subset, setting) -> dict:
    return build_ours(subset, setting)


@pytest.fixture(scope="module")
def official_users(official, official_side, setting) -> dict:
    return official_user_knn_on_trained_users(official, official_side, setting)


# --------------------------------------------------------------------------------------------
# row checks (each returns a list of human-readable mismatches)
# --------------------------------------------------------------------------------------------

def row(matrix: sp.csr_matrix, i: int) -> tuple[np.ndarray, np.ndarray]:
    start, end = matrix.indptr[i], matrix.indptr[i + 1]
    order = np.argsort(matrix.indices[start:end], kind="stable")
    return matrix.indices[start:end][order], matrix.data[start:end][order]


def valid_top_k(chosen: np.ndarray, score: np.ndarray, k: int, tie_tol: float) -> str | None:
    """Is `chosen` a top-k of `score` (candidates: finite entries) when near-equal scores are
    interchangeable? None if so, else why not."""
    candidates = np.flatnonzero(np.isfinite(score))
    wanted = min(k, len(candidates))
    if len(chosen) != wanted or len(np.unique(chosen)) != wanted:
        return f"{len(np.unique(chosen))} distinct neighbours, expected {wanted}"
    if not np.isin(chosen, candidates).all():
        return f"neighbours {sorted(set(chosen) - set(candidates))} are not candidates"
    kth = np.sort(score[candidates])[::-1][wanted - 1]
    too_low = chosen[score[chosen] < kth - tie_tol]
    missing = np.setdiff1d(np.flatnonzero(score > kth + tie_tol), chosen)
    if len(too_low) or len(missing):
        return f"not a top-{k}: below the k-th score {kth:g}: {too_low[:5]}, left out: {missing[:5]}"
    return None


def ambiguous_top_k(score: np.ndarray, k: int, tie_tol: float) -> bool:
    """True when ties at the k-th score leave more than one valid top-k."""
    finite = np.sort(score[np.isfinite(score)])[::-1]
    if len(finite) <= k:
        return False
    kth = finite[k - 1]
    return bool(np.sum(np.abs(finite - kth) <= tie_tol) > np.sum(np.abs(finite[:k] - kth) <= tie_tol))


def same_values(ours: np.ndarray, theirs: np.ndarray, tol: float = VALUE_TOL) -> bool:
    return len(ours) == len(theirs) and bool(np.allclose(np.sort(ours), np.sort(theirs), rtol=0, atol=tol))


def cooccurrence_row_kind(counts_row: np.ndarray, k: int) -> str:
    n_neighbours = np.count_nonzero(counts_row)
    return "full" if n_neighbours >= k else ("padded" if n_neighbours else "empty")


def cooccurrence_row_unique(counts_row: np.ndarray, popularity: np.ndarray, k: int) -> bool:
    """True when the official neighbour choice of this row leaves no room for ties (padded
    rows hold all co-occurring nodes, so only full and empty rows can be ambiguous)."""
    kind = cooccurrence_row_kind(counts_row, k)
    score = popularity if kind == "empty" else np.where(counts_row > 0, counts_row, -np.inf)
    return not ambiguous_top_k(score, k, 0.5)


def fallback_weights(popularity: np.ndarray, k: int) -> np.ndarray:
    """The official weights of a popularity-fallback row: softmax over the k largest
    popularity counts c of c / sum(c)."""
    top = np.sort(popularity[np.isfinite(popularity)])[::-1][:k]
    share = top / top.sum()
    weights = np.exp(share - share.max())
    return weights / weights.sum()


def compare_cooccurrence(ours: sp.csr_matrix, theirs: sp.csr_matrix, counts: np.ndarray,
                         popularity: np.ndarray, k: int, official_fallback: bool = True
                         ) -> tuple[list[str], dict]:
    """Rows with >= k co-occurring neighbours: ours is a top-k of the counts and the weights
    (softmax over counts) equal the official ones as a multiset; rows the official code pads
    at random: same neighbour set; rows without any: the popularity fallback, a top-k of
    `popularity` with the official row's weights (`official_fallback`) or, where we rank by a
    different popularity than the official code, the official weighting of `popularity`."""
    problems, kinds = [], {"full": 0, "padded": 0, "empty": 0}
    for i in range(counts.shape[0]):
        kind = cooccurrence_row_kind(counts[i], k)
        kinds[kind] += 1
        our_idx, our_val = row(ours, i)
        their_idx, their_val = row(theirs, i)
        if kind == "padded":
            if not np.array_equal(our_idx, their_idx):
                problems.append(f"row {i} (padded): neighbours {our_idx[:8]} vs official {their_idx[:8]}")
            continue
        score = np.where(counts[i] > 0, counts[i], -np.inf) if kind == "full" else popularity
        expected = their_val if kind == "full" or official_fallback else fallback_weights(popularity, k)
        why = valid_top_k(our_idx, score, k, tie_tol=0.5)
        if why:
            problems.append(f"row {i} ({kind}): {why}")
        elif not same_values(our_val, expected):
            problems.append(f"row {i} ({kind}): weights {np.sort(our_val)[:4]} vs expected {np.sort(expected)[:4]}")
    return problems, kinds


def degree(matrix: sp.csr_matrix, axis: int) -> np.ndarray:
    """Number of distinct partners per user (axis 1) or item (axis 0); -inf where none, since
    the official fallback lists only nodes that have one."""
    counts = np.diff(sp.csr_matrix(matrix if axis == 1 else matrix.T).indptr).astype(np.float64)
    return np.where(counts > 0, counts, -np.inf)


def all_split_matrix(subset: Subset) -> sp.csr_matrix:
    matrix = sp.csr_matrix((np.ones(len(subset.users)), (subset.users, subset.items)),
                           shape=(subset.n_users, subset.n_items))
    matrix.data[:] = 1.0
    return matrix


def compare_knn(ours: sp.csr_matrix, theirs: sp.csr_matrix, similarity: np.ndarray, k: int,
                rows: np.ndarray, candidates: np.ndarray) -> list[str]:
    """Per row: ours is a top-k of the official similarity among `candidates` (ties within
    SIM_TIE_TOL interchangeable), and its values equal the official ones (as a multiset)."""
    problems = []
    mask = np.full(similarity.shape[1], -np.inf)
    for i in rows:
        score = mask.copy()
        score[candidates] = similarity[i, candidates]
        our_idx, our_val = row(ours, i)
        their_idx, their_val = row(theirs, i)
        why = valid_top_k(our_idx, score, k, SIM_TIE_TOL)
        if why:
            problems.append(f"row {i}: {why}")
        elif not same_values(our_val, their_val):
            worst = np.abs(np.sort(our_val) - np.sort(their_val)).max() if len(our_val) == len(their_val) else np.inf
            problems.append(f"row {i}: values differ by up to {worst:.3g}")
    return problems


def compare_rows_exactly(ours: sp.csr_matrix, theirs: sp.csr_matrix, rows: np.ndarray) -> float:
    """Largest absolute difference over the given rows (missing entries count as 0)."""
    if len(rows) == 0:
        return 0.0
    difference = (ours[rows] - theirs[rows]).tocsr()
    return float(np.abs(difference.data).max()) if difference.nnz else 0.0


def support(matrix: sp.csr_matrix, i: int) -> np.ndarray:
    idx, val = row(matrix, i)
    return idx[val != 0]


def report(record_property, name: str, value) -> None:
    print(f"[parity] {name} = {value}")
    record_property(name, value)


def fail_if(problems: list[str], what: str) -> None:
    if problems:
        shown = "\n  ".join(problems[:10])
        pytest.fail(f"{what}: {len(problems)} rows differ from the official code, first ones:\n  {shown}")


# --------------------------------------------------------------------------------------------
# (a) graphs
# --------------------------------------------------------------------------------------------

def test_subset_exercises_every_case(subset, official_side, setting):
    """Guard against a vacuous parity run: the subset must contain the hard cases."""
    assert len(subset.users_without_training) >= 1
    k_user, k_item = setting.graph["user_knn_k"], setting.graph["item_knn_k"]
    for counts, k in ((official_side.user_counts, k_user), (official_side.item_counts, k_item)):
        kinds = {cooccurrence_row_kind(r, k) for r in counts}
        assert kinds == {"full", "padded", "empty"}, kinds


@pytest.mark.parametrize("side", ["user", "item"])
def test_cooccurrence_graph_matches_official(side, ours, official_side, subset, setting, record_property):
    """User rows without co-occurring neighbour: see test_official_user_fallback_counts_every_split;
    ours rank users by their TRAINING degree there, with the official weighting."""
    k = setting.graph[f"{side}_knn_k"]
    counts = getattr(official_side, f"{side}_counts")
    if side == "item":
        popularity, official_fallback = official_side.item_popularity, True
    else:
        popularity, official_fallback = degree(subset.train, axis=1), False
    problems, kinds = compare_cooccurrence(ours[f"{side}_cooccurrence"],
                                           official_side.graphs[f"{side}_cooccurrence"],
                                           counts, popularity, k, official_fallback)
    report(record_property, f"{setting.name}_{side}_cooccurrence_rows", kinds)
    fail_if(problems, f"{side} co-occurrence graph ({setting.name})")


def test_official_user_fallback_counts_every_split(official_side, subset):
    """A documented difference (docs/choices.md, docs/testing.md): the official popularity
    fallback ranks users by their distinct items over train + valid + test (its user -> items
    dictionary is extended in place with the evaluation splits before the ranking is taken),
    items by their training users only. Ours ranks both by training degree, the only
    interactions a graph builder receives. Pinned here so that a change on either side shows."""
    train_users = degree(subset.train, axis=1)
    every_split_users = degree(all_split_matrix(subset), axis=1)
    assert np.array_equal(official_side.user_popularity, every_split_users)
    assert not np.array_equal(official_side.user_popularity, train_users)
    assert np.array_equal(official_side.item_popularity, degree(subset.train, axis=0))


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_item_semantic_graph_per_modality_matches_official(modality, ours, official_side, subset, setting):
    similarity = _cosine(torch.from_numpy(subset.features[modality]))
    everything = np.arange(subset.n_items)
    problems = compare_knn(ours[f"item_semantic/{modality}"],
                           official_side.graphs[f"item_semantic/{modality}"],
                           similarity, setting.graph["item_knn_k"], everything, everything)
    fail_if(problems, f"item semantic graph, {modality} ({setting.name})")


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_user_interest_graph_per_modality_matches_official(modality, ours, official_users, setting):
    trained = official_users["trained_users"]
    problems = compare_knn(ours[f"user_interest/{modality}"], official_users[modality],
                           official_users[f"similarity/{modality}"], setting.graph["user_knn_k"],
                           trained, trained)
    fail_if(problems, f"user interest graph, {modality} ({setting.name})")


def test_users_without_training_items(ours, official_side, subset):
    """Official: NaN interest rows for users without training items (and, through torch.topk
    ranking NaN first, a NaN entry in every row). Ours: finite everywhere."""
    orphans = subset.users_without_training
    official_interest = official_side.graphs["user_interest"]
    assert all(np.isnan(row(official_interest, u)[1]).any() for u in orphans)
    for name in ("user_interest", "user_homogeneous", "user_interest/image", "user_interest/audio"):
        assert np.isfinite(ours[name].data).all(), name


def _unambiguous_knn_rows(similarities: list[np.ndarray], k: int, rows: np.ndarray,
                          candidates: np.ndarray) -> np.ndarray:
    """The rows whose top-k (among `candidates`) is unique in every given similarity."""
    outside = np.ones(similarities[0].shape[1], dtype=bool)
    outside[candidates] = False
    return np.asarray([i for i in rows
                       if not any(ambiguous_top_k(np.where(outside, -np.inf, s[i]), k, SIM_TIE_TOL)
                                  for s in similarities)], dtype=np.int64)


def test_fused_item_graphs_match_official(ours, official_side, subset, setting, record_property):
    """Fused semantic graph and homogeneous graph: equal values on rows where no tie leaves a
    choice (padded co-occurrence rows: same neighbour set only)."""
    k = setting.graph["item_knn_k"]  # official: the co-occurrence graph uses the same k
    everything = np.arange(subset.n_items)
    weights = {"image": setting.graph["i_mm_image_weight"], "audio": 1 - setting.graph["i_mm_image_weight"]}
    similarities = [_cosine(torch.from_numpy(subset.features[m])) for m, w in weights.items() if w > 0]
    clean = _unambiguous_knn_rows(similarities, k, everything, everything)
    semantic_diff = compare_rows_exactly(ours["item_semantic"], official_side.graphs["item_semantic"], clean)

    kinds = np.array([cooccurrence_row_kind(r, k) for r in official_side.item_counts])
    co_clean = np.array([cooccurrence_row_unique(r, official_side.item_popularity, k)
                         for r in official_side.item_counts])
    exact_rows = clean[(kinds[clean] != "padded") & co_clean[clean]]
    homogeneous_diff = compare_rows_exactly(ours["item_homogeneous"], official_side.graphs["item_homogeneous"], exact_rows)
    set_problems = [f"row {i}: neighbours differ" for i in clean[kinds[clean] == "padded"]
                    if not np.array_equal(support(ours["item_homogeneous"], i),
                                          support(official_side.graphs["item_homogeneous"], i))]
    report(record_property, f"{setting.name}_item_fused_rows_compared", (len(clean), len(exact_rows)))
    report(record_property, f"{setting.name}_item_fused_max_diff", max(semantic_diff, homogeneous_diff))
    assert len(clean) > subset.n_items // 2 and len(exact_rows) >= 100
    assert semantic_diff <= VALUE_TOL
    assert homogeneous_diff <= VALUE_TOL
    fail_if(set_problems, f"item homogeneous graph, padded rows ({setting.name})")


def test_fused_user_graphs_match_official(ours, official_side, official_users, setting, record_property):
    """As for items, over users with training items, against the official construction on
    those users (see official_user_knn_on_trained_users)."""
    k = setting.graph["user_knn_k"]
    w_image = setting.graph["u_mm_image_weight"]
    w_co = setting.graph["uu_co_weight"]
    trained = official_users["trained_users"]
    reference_interest = (w_image * official_users["image"] + (1 - w_image) * official_users["audio"]).tocsr()
    reference_homogeneous = (w_co * official_side.graphs["user_cooccurrence"]
                             + (1 - w_co) * reference_interest).tocsr()
    similarities = [official_users[f"similarity/{m}"] for m, w in (("image", w_image), ("audio", 1 - w_image)) if w > 0]
    clean = _unambiguous_knn_rows(similarities, k, trained, trained)
    interest_diff = compare_rows_exactly(ours["user_interest"], reference_interest, clean)

    kinds = np.array([cooccurrence_row_kind(r, k) for r in official_side.user_counts])
    co_clean = np.array([cooccurrence_row_unique(r, official_side.user_popularity, k)
                         for r in official_side.user_counts])
    # fallback rows rank by a different popularity (test_official_user_fallback_counts_every_split)
    exact_rows = clean[(kinds[clean] == "full") & co_clean[clean]]
    homogeneous_diff = compare_rows_exactly(ours["user_homogeneous"], reference_homogeneous, exact_rows)
    set_problems = [f"row {i}: neighbours differ" for i in clean[kinds[clean] == "padded"]
                    if not np.array_equal(support(ours["user_homogeneous"], i), support(reference_homogeneous, i))]
    report(record_property, f"{setting.name}_user_fused_rows_compared", (len(clean), len(exact_rows)))
    report(record_property, f"{setting.name}_user_fused_max_diff", max(interest_diff, homogeneous_diff))
    # popularity ties among users leave few user rows with a unique official choice; the rest
    # is covered by the tie-aware part checks plus test_homogeneous_graph_is_the_official_mixture
    assert len(clean) > len(trained) // 2
    assert interest_diff <= VALUE_TOL
    assert homogeneous_diff <= VALUE_TOL
    fail_if(set_problems, f"user homogeneous graph, padded rows ({setting.name})")


@pytest.mark.parametrize("side, co_key", [("user", "uu_co_weight"), ("item", "ii_co_weight")])
def test_homogeneous_graph_is_the_official_mixture_of_ours(side, co_key, ours, setting):
    """The rows the comparisons above leave out (ties, padding) are still the official mixture
    co_weight * co-occurrence + (1 - co_weight) * similarity of our (tie-aware checked) parts."""
    weight = setting.graph[co_key]
    similarity = ours["user_interest" if side == "user" else "item_semantic"]
    mixture = weight * ours[f"{side}_cooccurrence"] + (1 - weight) * similarity
    difference = (ours[f"{side}_homogeneous"] - mixture).tocsr()
    assert not difference.nnz or np.abs(difference.data).max() <= VALUE_TOL


# --------------------------------------------------------------------------------------------
# (b) model: same weights, same graphs -> same scores and loss terms
# --------------------------------------------------------------------------------------------

# loss weights for the model comparison: distinct and not 1, so a missing or swapped factor
# shows, and large enough that the terms are not below the tolerance (the official 5e-6 would be)
@pytest.fixture(scope="module")
def model_data_root(subset, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rearm_ours_data")
    write_mmrec_features(subset, root)
    return root


@pytest.fixture(scope="module")
def our_model(subset, setting, model_data_root):
    from mmrec_rearm.host import ArrayDataLoader
    from mmrec_rearm.model.rearm import REARM

    train = subset.split == 0
    loader = ArrayDataLoader(subset.users[train], subset.items[train], subset.n_users, subset.n_items)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return REARM(our_config(setting, model_data_root), loader).eval()


@pytest.fixture(scope="module")
def model_pair(official, setting, official_side, official_workdir, our_model):
    """(official, ours): the official REARM on our model's graphs with perturbed weights, and our
    model with those weights loaded through load_official_state_dict; both in eval mode."""
    from mmrec_rearm.official import load_official_state_dict

    graphs = {"user_homogeneous": graph_as_csr(our_model.user_graph),
              "item_homogeneous": graph_as_csr(our_model.item_graph)}
    theirs = build_official_model(official, setting, official_side, graphs, official_workdir)
    load_official_state_dict(our_model, theirs.state_dict())
    return theirs, our_model.eval()


def test_our_model_uses_the_graphs_checked_above(our_model, ours):
    for name, graph in (("user_homogeneous", our_model.user_graph), ("item_homogeneous", our_model.item_graph)):
        difference = (graph_as_csr(graph) - ours[name]).tocsr()
        assert not difference.nnz or np.abs(difference.data).max() <= VALUE_TOL, name


def test_interaction_graph_matches_official(model_pair):
    theirs, ours = model_pair
    difference = (to_csr(theirs.norm_adj) - graph_as_csr(ours.interaction_graph)).tocsr()
    assert not difference.nnz or np.abs(difference.data).max() <= VALUE_TOL


# float32: the models as they run; tolerance 1e-5 relative to the largest score / loss term.
# float64: the same weights and graphs in double precision; tolerance 1e-5 absolute.
PRECISIONS = ["float32", "float64"]


@pytest.fixture(scope="module")
def model_pair_float64(model_pair):
    return as_float64(model_pair)


def _pair_in(precision: str, request):
    return request.getfixturevalue("model_pair" if precision == "float32" else "model_pair_float64")


def _tolerance(precision: str, scale: float) -> float:
    return MODEL_TOL * max(1.0, scale) if precision == "float32" else MODEL_TOL


@pytest.mark.parametrize("precision", PRECISIONS)
def test_scores_match_official(precision, request, setting, record_property):
    theirs, ours = _pair_in(precision, request)
    expected = official_scores(theirs, SCORED_USERS)
    with torch.no_grad():
        got = ours.full_sort_predict((torch.as_tensor(SCORED_USERS),)).double().numpy()
    assert got.shape == expected.shape and np.isfinite(expected).all() and np.isfinite(got).all()
    difference = float(np.abs(got - expected).max())
    scale = float(np.abs(expected).max())
    report(record_property, f"{setting.name}_{precision}_max_score_diff", difference)
    report(record_property, f"{setting.name}_{precision}_max_abs_score", scale)
    assert difference <= _tolerance(precision, scale)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_loss_terms_match_official(precision, request, subset, setting, record_property):
    theirs, ours = _pair_in(precision, request)
    batch = training_batch(subset)
    expected = official_loss_terms(theirs, batch, subset.n_users)
    with torch.no_grad():
        bpr, contrastive, orthogonal, reg = ours.calculate_loss(torch.stack(batch))
    got = {"bpr": float(bpr), "contrastive": float(contrastive), "orthogonal": float(orthogonal)}
    differences = {name: abs(got[name] - expected[name]) for name in expected}
    report(record_property, f"{setting.name}_{precision}_loss_terms", {n: (got[n], expected[n]) for n in expected})
    report(record_property, f"{setting.name}_{precision}_max_loss_diff", max(differences.values()))
    assert float(reg) == 0.0  # official: no loss-side regularisation (AdamW's decoupled decay instead)
    for name, difference in differences.items():
        assert difference <= _tolerance(precision, abs(expected[name])), (name, got[name], expected[name])
