"""The user interest kNN graph (paper Sec. 4.1 interests, eq. 2): the feature and the item-Gram routes.

A user's interest is the mean feature of their training items; cosine ignores the scale, so the
sums ``Y = R X`` are used. Two exact routes, chosen by estimated cost (:func:`choose_user_route`):
``"features"`` multiplies ``Y`` block by block (``n_users^2 d`` multiply-adds); ``"gram"`` forms
the item Gram matrix ``G = X X^T`` once and gets each block of ``Y Y^T`` as ``R_b G R^T`` with two
sparse products (``n_items^2 d`` plus ``nnz(R) (n_items + n_users)``).

Only numpy, scipy and :mod:`mmrec_rearm.errors` are imported here (no torch, no MMRec).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.sparse as sp

from ..errors import GraphParamError
from .blocks import BLOCK_BYTES, Progress
from .inputs import as_features, binary_matrix, check_k, inverse_norms, row_norms, safe_scale
from .knn import column_blocks, gram_matrix, knn_graph, tiled_knn_graph, use_tiles
from .tiles import TILE_SIZE, tile_bounds

__all__ = ["GRAM_MAX_BYTES", "SPARSE_MAC_COST", "DENSE_MAX_BYTES", "user_interest_features", "choose_user_route",
           "user_interest_knn", "user_knn_from_features", "user_knn_from_gram"]

#: The "gram" route of the user interest graph is never taken when G would exceed this.
GRAM_MAX_BYTES = 2 << 30
#: Cost of one sparse multiply-add (scipy, per thread) in units of one BLAS float32 multiply-add.
#: Measured on the 2-core reference box: ~160 G BLAS MAC/s against ~1-3 G sparse MAC/s (the
#: gram route's two products on Baby / Sports, memory-bound).
SPARSE_MAC_COST = 100.0
#: The feature route keeps the unit user vectors ``(n_users, d)`` whole up to this size; beyond
#: it, they are summed again from the interactions for every tile.
DENSE_MAX_BYTES = 2 << 30
# Most user blocks handled at once by the gram route (keeps R G's block cache-resident).
_GRAM_BLOCK_MAX = 256


def user_interest_features(interactions, features: np.ndarray) -> np.ndarray:
    """Users' modal interest: mean feature of each user's training items (Sec. 4.1), ``(n_users, d)``.

    float32; a user without training items gets a zero row (the official code divides 0 by 0).
    The interest graphs do not need this array: cosine ignores the ``1/|I_u|`` scale.
    """
    binary = binary_matrix(interactions)
    x = as_features(features, binary.shape[1], "features")
    sums = binary @ x
    deg = np.diff(binary.indptr).astype(np.float32)
    np.divide(sums, deg[:, None], out=sums, where=deg[:, None] > 0)
    return sums.astype(np.float32, copy=False)


def choose_user_route(n_users: int, n_items: int, nnz: int, dim: int, gram_shared: bool = False) -> str:
    """``"features"`` or ``"gram"``: the cheaper exact route to a user interest kNN graph.

    Estimated multiply-adds (a sparse one costs :data:`SPARSE_MAC_COST` BLAS ones):
    features = ``n_users^2 d + c nnz d`` (half the first term where square tiles are used, beyond
    65,536 users); gram = ``n_items^2 d`` (0 when the item side needs the same Gram anyway,
    ``gram_shared``) ``+ c nnz (n_items + n_users)``. The gram route also needs ``4 n_items^2``
    bytes and is refused above :data:`GRAM_MAX_BYTES`.
    """
    if 4 * n_items * n_items > GRAM_MAX_BYTES:
        return "features"
    share = 0.5 if use_tiles(n_users, None, None) else 1.0
    via_features = share * float(n_users) ** 2 * dim + SPARSE_MAC_COST * nnz * dim
    via_gram = (0.0 if gram_shared else float(n_items) ** 2 * dim) + \
        SPARSE_MAC_COST * float(nnz) * (n_items + n_users)
    return "gram" if via_gram < via_features else "features"


def user_knn_from_features(binary: sp.csr_matrix, x: np.ndarray, k: int, knn_self: bool,
                           block_size: Optional[int], label: str, progress: Progress,
                           tile_size: Optional[int] = None) -> sp.csr_matrix:
    n = binary.shape[0]
    xs = safe_scale(x)
    if not use_tiles(n, block_size, tile_size):
        y = binary @ xs  # (n_users, d) feature sums: same cosines as the means
        inv = inverse_norms(row_norms(y))
        y *= inv[:, None]
        blocks = column_blocks(n, 4 * n, block_size)

        def produce(bounds):
            s, e = bounds
            return y @ y[s:e].T

        return knn_graph(n, k, knn_self, inv == 0, blocks, produce, produce_in_workers=False,
                         label=label, progress=progress)
    tile = tile_size or TILE_SIZE
    if 4 * n * xs.shape[1] <= DENSE_MAX_BYTES:
        y = binary @ xs
        inv = inverse_norms(row_norms(y))
        y *= inv[:, None]

        def vectors(s: int, e: int) -> np.ndarray:
            return y[s:e]
    else:
        # Y itself would not fit: each tile's rows are summed again from the interactions (a
        # sparse product per tile, small next to the tile's dense one).
        inv = inverse_norms(np.concatenate([row_norms(binary[s:e] @ xs) for s, e in tile_bounds(n, tile)]))

        def vectors(s: int, e: int) -> np.ndarray:
            part = binary[s:e] @ xs
            part *= inv[s:e, None]
            return part
    return tiled_knn_graph(n, k, knn_self, inv == 0, vectors, tile, label=label, progress=progress)


def _quadratic_forms(binary: sp.csr_matrix, gram: np.ndarray, chunk_pairs: int = 1 << 22) -> np.ndarray:
    """``r_u^T G r_u`` for every user (squared norm of the user's feature sum), float64.

    Users are taken in chunks of at most ``chunk_pairs`` (item, item) pairs; a user with more
    pairs than that alone is summed a slice of its items at a time, so memory stays bounded.
    """
    n = binary.shape[0]
    deg = np.diff(binary.indptr).astype(np.int64)
    out = np.zeros(n)
    cum = np.cumsum(deg * deg)
    start = 0
    while start < n:
        if deg[start] ** 2 > chunk_pairs:
            items = binary.indices[binary.indptr[start]:binary.indptr[start + 1]]
            step = max(1, chunk_pairs // int(deg[start]))
            out[start] = sum(gram[np.ix_(items[c:c + step], items)].sum(dtype=np.float64)
                             for c in range(0, items.size, step))
            start += 1
            continue
        base = cum[start - 1] if start else 0
        stop = int(np.searchsorted(cum, base + chunk_pairs, side="right"))
        stop = max(start + 1, min(stop, n))
        heavy = np.flatnonzero(deg[start:stop] ** 2 > chunk_pairs)
        if heavy.size:  # heavy[0] >= 1: a heavy first user took the branch above
            stop = start + int(heavy[0])
        users = np.arange(start, stop)
        entry_user = np.repeat(users, deg[users])  # one per interaction of these users
        items = binary.indices[binary.indptr[start]:binary.indptr[stop]].astype(np.int64)
        reps = deg[entry_user]
        left = np.repeat(items, reps)
        offset = np.arange(left.size) - np.repeat(np.cumsum(reps) - reps, reps)
        right = binary.indices[np.repeat(binary.indptr[entry_user], reps) + offset]
        owner = np.repeat(entry_user, reps) - start
        out[start:stop] = np.bincount(owner, weights=gram[left, right].astype(np.float64),
                                      minlength=stop - start)
        start = stop
    return out


def user_knn_from_gram(binary: sp.csr_matrix, gram: np.ndarray, k: int, knn_self: bool,
                        block_size: Optional[int], label: str, progress: Progress) -> sp.csr_matrix:
    n, n_items = binary.shape
    inv = inverse_norms(np.sqrt(np.maximum(_quadratic_forms(binary, gram), 0.0)))
    scaled = sp.csr_matrix(sp.diags(inv) @ binary, dtype=np.float32)  # rows / ||y_u||
    if block_size is None:
        block_size = int(min(_GRAM_BLOCK_MAX, max(16, BLOCK_BYTES // (4 * (2 * n_items + n)))))
    blocks = [(s, min(n, s + block_size)) for s in range(0, n, block_size)]

    def produce(bounds):
        s, e = bounds
        part = scaled[s:e] @ gram  # (b, n_items) = Y_hat_b X^T
        return scaled @ np.ascontiguousarray(part.T)  # (n_users, b) = Y_hat Y_hat_b^T

    return knn_graph(n, k, knn_self, inv == 0, blocks, produce, produce_in_workers=True,
                      label=label, progress=progress)



def user_interest_knn(interactions, features: np.ndarray, k: int, *, knn_self: bool = True,
                      route: str = "auto", block_size: Optional[int] = None, tile_size: Optional[int] = None,
                      progress: Progress = None, label: str = "user_interest") -> sp.csr_matrix:
    """User interest kNN graph of one modality: :func:`cosine_knn` of the users' mean features.

    ``interactions``: ``(n_users, n_items)``; ``features``: ``(n_items, d)``. A user's interest
    is the mean feature of their training items (Sec. 4.1); since cosine ignores scale the sums
    ``R X`` are used. Users without training items (or whose sum is the zero vector) get only a
    self-loop ``1/k``. ``route``: ``"features"``, ``"gram"`` or ``"auto"``
    (:func:`choose_user_route`); all routes give the same graph up to float32 rounding of the
    cosines. ``block_size`` / ``tile_size``: as in :func:`~mmrec_rearm.graphs.knn.cosine_knn` (the
    feature route; the gram route takes column blocks). Returns CSR float32 ``(n_users, n_users)``.
    """
    binary = binary_matrix(interactions)
    x = as_features(features, binary.shape[1], label)
    k = check_k(k, binary.shape[0], "user_knn_k")
    if route == "auto":
        route = choose_user_route(binary.shape[0], binary.shape[1], binary.nnz, x.shape[1])
    if route == "features":
        return user_knn_from_features(binary, x, k, knn_self, block_size, label, progress, tile_size)
    if route == "gram":
        return user_knn_from_gram(binary, gram_matrix(x), k, knn_self, block_size, label, progress)
    raise GraphParamError(f"route={route!r}: must be 'auto', 'features' or 'gram'.")
