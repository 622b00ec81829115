"""Blocked exact cosine kNN (paper eq. 2 + degree normalisation) and the item semantic graph.

Similarities are computed a block of columns at a time and reduced to their top-k at once
(exact float32, no approximate search), so memory grows with ``n * k``, never with ``n^2``.
The item graph comes from the features or from a precomputed item Gram matrix.

Only numpy, scipy and :mod:`mmrec_rearm.errors` are imported here (no torch, no MMRec).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import numpy as np
import scipy.sparse as sp

from .blocks import BLOCK_BYTES, Progress, reporter, run_blocks
from .inputs import as_features, canonical_csr, check_k, inverse_norms, row_norms, safe_scale
from .tiles import TILE_FROM, TILE_SIZE, symmetric_topk
from .topk import topk_columns

__all__ = ["cosine_knn", "knn_graph", "tiled_knn_graph", "assemble_knn", "use_tiles", "column_blocks",
           "item_knn_from_features", "item_knn_from_gram", "gram_matrix"]

def column_blocks(n: int, per_column_bytes: int, block_size: Optional[int], cap: int = 4096) -> List[Tuple[int, int]]:
    if block_size is None:
        block_size = int(min(cap, max(16, BLOCK_BYTES // max(1, per_column_bytes))))
    return [(s, min(n, s + block_size)) for s in range(0, n, block_size)]


def knn_graph(n: int, k: int, knn_self: bool, zero: np.ndarray, blocks: List[Tuple[int, int]],
               produce: Callable, *, produce_in_workers: bool, label: str,
               progress: Progress) -> sp.csr_matrix:
    """Assemble a kNN graph from column blocks of the cosine matrix.

    ``produce((s, e))`` returns the cosines ``(n, e - s)`` between every node and nodes ``s..e-1``.
    The node itself and zero-vector nodes are masked out, the ``kk`` best others are kept
    (``kk = k - 1`` plus an exact self-loop when ``knn_self``, else ``k``), every value is divided
    by ``k``. Zero-vector nodes get only a self-loop ``1/k``.
    """
    kk = k - 1 if knn_self else k
    zero_ids = np.flatnonzero(zero)
    parts = []
    if kk > 0 and zero_ids.size < n:
        def consume(bounds, block):
            s, e = bounds
            local = np.arange(e - s)
            block[s + local, local] = -np.inf
            if zero_ids.size:
                block[zero_ids, :] = -np.inf
            c, r, v = topk_columns(block, kk)
            return c + s, r, v

        if progress is not None:
            progress(f"{label}: {len(blocks)} blocks of {blocks[0][1] - blocks[0][0]} nodes")
        parts = run_blocks(blocks, produce, consume, produce_in_workers=produce_in_workers,
                            report=reporter(progress, label, len(blocks)))
    return assemble_knn(n, k, knn_self, zero, parts)


def tiled_knn_graph(n: int, k: int, knn_self: bool, zero: np.ndarray, vectors: Callable[[int, int], np.ndarray],
                    tile: Optional[int], *, label: str, progress: Progress) -> sp.csr_matrix:
    """:func:`knn_graph` from square tiles of the cosine matrix (:func:`tiles.symmetric_topk`).

    ``vectors(s, e)`` returns the unit vectors ``(e - s, d)`` of nodes ``s..e-1``.
    """
    kk = k - 1 if knn_self else k
    parts = []
    if kk > 0 and int(zero.sum()) < n:
        parts = symmetric_topk(n, kk, zero, vectors, tile=tile or TILE_SIZE, label=label, progress=progress)
    return assemble_knn(n, k, knn_self, zero, parts)


def use_tiles(n: int, block_size: Optional[int], tile_size: Optional[int]) -> bool:
    """Square tiles when asked for, or when a ~64 MB column block would hold under ``TILE_FROM`` columns."""
    if tile_size is not None:
        return True
    return block_size is None and BLOCK_BYTES // (4 * max(1, n)) < TILE_FROM


def assemble_knn(n: int, k: int, knn_self: bool, zero: np.ndarray, parts: list) -> sp.csr_matrix:
    """The kNN graph ``(n, n)`` from ``(node, neighbour, cosine)`` triplets: ``cos / k``, self-loops ``1/k``.

    Zero-vector nodes keep only their self-loop; with ``knn_self`` every node gets one.
    """
    zero_ids = np.flatnonzero(zero)
    rows = [p[0] for p in parts]
    cols = [p[1] for p in parts]
    vals = [p[2].astype(np.float64) for p in parts]
    if rows and zero_ids.size:
        rows_all = np.concatenate(rows)
        valid = ~zero[rows_all]
        rows, cols, vals = [rows_all[valid]], [np.concatenate(cols)[valid]], [np.concatenate(vals)[valid]]
    selfs = np.arange(n) if knn_self else zero_ids
    rows.append(selfs)
    cols.append(selfs)
    vals.append(np.ones(selfs.size))
    return canonical_csr(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals) / k, n)


def item_knn_from_features(x: np.ndarray, k: int, knn_self: bool, block_size: Optional[int],
                           label: str, progress: Progress, tile_size: Optional[int] = None) -> sp.csr_matrix:
    n = x.shape[0]
    x = safe_scale(x)
    inv = inverse_norms(row_norms(x))
    if use_tiles(n, block_size, tile_size):
        return tiled_knn_graph(n, k, knn_self, inv == 0, lambda s, e: x[s:e] * inv[s:e, None], tile_size,
                               label=label, progress=progress)
    blocks = column_blocks(n, 4 * n, block_size)

    def produce(bounds):
        s, e = bounds
        block = x @ (x[s:e] * inv[s:e, None]).T  # (n, b): x_i . x_hat_j
        block *= inv[:, None]
        return block

    return knn_graph(n, k, knn_self, inv == 0, blocks, produce, produce_in_workers=False,
                      label=label, progress=progress)


def item_knn_from_gram(gram: np.ndarray, k: int, knn_self: bool, block_size: Optional[int],
                        label: str, progress: Progress) -> sp.csr_matrix:
    n = gram.shape[0]
    norms = np.sqrt(np.maximum(np.diag(gram).astype(np.float64), 0.0))
    inv = inverse_norms(norms)
    blocks = column_blocks(n, 4 * n, block_size)

    def produce(bounds):
        s, e = bounds
        block = gram[:, s:e] * inv[:, None]  # a fresh (n, b) C-contiguous array
        block *= inv[None, s:e]
        return block

    return knn_graph(n, k, knn_self, inv == 0, blocks, produce, produce_in_workers=True,
                      label=label, progress=progress)


def cosine_knn(features: np.ndarray, k: int, *, knn_self: bool = True,
               block_size: Optional[int] = None, tile_size: Optional[int] = None,
               progress: Progress = None, label: str = "item_semantic") -> sp.csr_matrix:
    """Cosine kNN graph of the rows of ``features`` ``(n, d)``: eq. (2) + degree normalisation.

    Row ``i`` keeps its ``k`` most cosine-similar rows with weight ``cos / k``. With ``knn_self``
    (official) the row itself is one of the ``k``, with weight exactly ``1/k``; otherwise the ``k``
    most similar other rows. Ties: lower id first. Cosines can be negative and are kept as they
    are. An all-zero row has no direction: it is nobody's neighbour and gets only a self-loop
    ``1/k``. Returns CSR float32 ``(n, n)``.

    The cosines come a block at a time: ``block_size`` columns over all rows (default ~64 MB
    blocks), or, with ``tile_size`` (default beyond 65,536 rows, where such a block gets too
    narrow), square tiles of the upper triangle, each serving both its rows and its columns.
    Both are exact; they differ only in float32 rounding of the cosines.
    """
    x = as_features(features, np.asarray(features).shape[0], label)
    k = check_k(k, x.shape[0], "k")
    return item_knn_from_features(x, k, knn_self, block_size, label, progress, tile_size)


def gram_matrix(x: np.ndarray) -> np.ndarray:
    """Raw item Gram ``X X^T`` ``(n_items, n_items)`` float32 (one BLAS call)."""
    x = safe_scale(x)
    # np.dot recognises X X^T and uses the symmetric rank-k update (half the work of matmul's gemm)
    return np.dot(x, x.T)
