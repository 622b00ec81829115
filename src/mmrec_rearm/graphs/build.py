"""Fusion of graphs (paper Sec. 4.2.2-4.2.3) and :func:`build_graphs`, which wires all of them.

Only numpy, scipy and :mod:`mmrec_rearm.errors` are imported here (no torch, no MMRec).
"""
from __future__ import annotations

import time
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.sparse as sp

from ..errors import DatasetError, GraphParamError
from . import cooccurrence, interest, knn
from .blocks import Progress
from .inputs import as_features, binary_matrix, canonical_csr, check_k, empty_graph
from .params import GraphParams, HomogeneousGraphs

__all__ = ["FeatureInput", "fuse_graphs", "build_graphs"]

FeatureInput = Union[Sequence[np.ndarray], Mapping[str, np.ndarray]]


def fuse_graphs(graphs: Sequence[Optional[sp.spmatrix]], weights: Sequence[float],
                n: Optional[int] = None) -> sp.csr_matrix:
    """``sum_m weights[m] * graphs[m]`` as CSR float32 (sums in float64, then rounded once).

    A graph with weight 0 is skipped and may be ``None``. The pattern is the union of the used
    graphs' patterns (entries that cancel stay stored as 0). ``n``: node count, needed only when
    every weight is 0.
    """
    if len(graphs) != len(weights):
        raise GraphParamError(f"fuse_graphs: {len(graphs)} graphs but {len(weights)} weights.")
    used = [(g, float(w)) for g, w in zip(graphs, weights) if w != 0]
    if n is None:
        shapes = {tuple(g.shape) for g, _ in used}
        if not shapes:
            raise GraphParamError("fuse_graphs: every weight is 0; pass n to get an empty graph.")
        n = next(iter(shapes))[0]
    if not used:
        return empty_graph(n)
    rows, cols, vals = [], [], []
    for g, w in used:
        if g is None or tuple(g.shape) != (n, n):
            raise GraphParamError(
                f"fuse_graphs: graph of shape {None if g is None else g.shape} with weight {w}; "
                f"expected ({n}, {n}).")
        coo = sp.coo_matrix(g)
        rows.append(coo.row)
        cols.append(coo.col)
        vals.append(coo.data.astype(np.float64) * w)
    return canonical_csr(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), n)


def _named_features(features: FeatureInput) -> List[Tuple[str, np.ndarray]]:
    if features is None:
        return []
    if isinstance(features, Mapping):
        return [(str(name), arr) for name, arr in features.items()]
    if isinstance(features, np.ndarray):
        raise DatasetError(
            "features: pass a mapping {modality: (n_items, d) array} or a list of arrays, "
            "not a single array.")
    return [(f"modality{i}", arr) for i, arr in enumerate(features)]


def build_graphs(interactions: sp.spmatrix, features: FeatureInput, params: GraphParams,
                 progress: Progress = None) -> HomogeneousGraphs:
    """All homogeneous graphs of REARM (Sec. 4.2) from the training matrix and item features.

    ``interactions``: ``(n_users, n_items)`` training split (non-zero = interaction);
    ``features``: modality -> ``(n_items, d_m)`` array (or a list, in modality order; the first
    is the one weighted by ``*_mm_image_weight``). A graph with fusion weight 0 is not computed
    and returned empty. Raises :class:`GraphParamError` for ``k >=`` the node count or a
    per-modality weight list of the wrong length, :class:`DatasetError` for malformed inputs.
    """
    if not isinstance(params, GraphParams):
        raise GraphParamError(f"params: expected GraphParams, got {type(params).__name__}.")
    binary = binary_matrix(interactions)
    n_users, n_items = binary.shape
    named = [(name, as_features(arr, n_items, name)) for name, arr in _named_features(features)]
    check_k(params.user_knn_k, n_users, "user_knn_k")
    check_k(params.item_knn_k, n_items, "item_knn_k")
    user_w = params.modal_weights("user", len(named))
    item_w = params.modal_weights("item", len(named))
    need_interest = params.uu_co_weight < 1.0
    need_semantic = params.ii_co_weight < 1.0
    if (need_interest or need_semantic) and not named:
        raise GraphParamError(
            f"no feature modality given, but uu_co_weight={params.uu_co_weight} / "
            f"ii_co_weight={params.ii_co_weight} ask for the interest / semantic graphs; pass "
            "features or set both weights to 1.")
    seconds = {name: 0.0 for name in HomogeneousGraphs.GRAPH_NAMES}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        seconds[name] += time.perf_counter() - t0
        return out

    def cooc(side, k, weight):
        if weight == 0:
            return empty_graph(n_users if side == "user" else n_items)
        return timed(f"{side}_cooccurrence", lambda: cooccurrence.cooccurrence_topk(
            binary, k, side=side, padding=params.cooc_padding, empty=params.cooc_empty,
            seed=params.seed, progress=progress))

    user_co = cooc("user", params.user_knn_k, params.uu_co_weight)
    item_co = cooc("item", params.item_knn_k, params.ii_co_weight)

    user_graphs: List[Optional[sp.csr_matrix]] = [None] * len(named)
    item_graphs: List[Optional[sp.csr_matrix]] = [None] * len(named)
    for m, (name, x) in enumerate(named):
        want_user = need_interest and user_w[m] > 0
        want_item = need_semantic and item_w[m] > 0
        route = None
        if want_user:
            route = interest.choose_user_route(n_users, n_items, binary.nnz, x.shape[1], gram_shared=want_item)
        if route == "gram":
            t0 = time.perf_counter()
            if progress is not None:
                progress(f"user_interest[{name}]: item Gram {n_items}x{n_items} (gram route)")
            gram = knn.gram_matrix(x)
            user_graphs[m] = interest.user_knn_from_gram(binary, gram, params.user_knn_k, params.knn_self, None,
                                                 f"user_interest[{name}]", progress)
            seconds["user_interest"] += time.perf_counter() - t0
            if want_item:
                item_graphs[m] = timed("item_semantic", lambda: knn.item_knn_from_gram(
                    gram, params.item_knn_k, params.knn_self, None, f"item_semantic[{name}]", progress))
            del gram
            continue
        if want_user:
            if progress is not None:
                progress(f"user_interest[{name}]: feature route")
            user_graphs[m] = timed("user_interest", lambda: interest.user_knn_from_features(
                binary, x, params.user_knn_k, params.knn_self, None, f"user_interest[{name}]", progress))
        if want_item:
            item_graphs[m] = timed("item_semantic", lambda: knn.item_knn_from_features(
                x, params.item_knn_k, params.knn_self, None, f"item_semantic[{name}]", progress))

    user_interest = timed("user_interest", lambda: fuse_graphs(
        user_graphs, user_w if need_interest else [0.0] * len(named), n_users))
    item_semantic = timed("item_semantic", lambda: fuse_graphs(
        item_graphs, item_w if need_semantic else [0.0] * len(named), n_items))
    user_hom = timed("user_homogeneous", lambda: fuse_graphs(
        [user_co, user_interest], [params.uu_co_weight, 1.0 - params.uu_co_weight], n_users))
    item_hom = timed("item_homogeneous", lambda: fuse_graphs(
        [item_co, item_semantic], [params.ii_co_weight, 1.0 - params.ii_co_weight], n_items))
    return HomogeneousGraphs(user_cooccurrence=user_co, user_interest=user_interest,
                             item_cooccurrence=item_co, item_semantic=item_semantic,
                             user_homogeneous=user_hom, item_homogeneous=item_hom, seconds=seconds)
