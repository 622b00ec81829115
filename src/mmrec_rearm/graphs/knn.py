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

__all__ = ["cosine_knn", "knn_graph", "column_blocks", "item_knn_from_features", "item_knn_from_gram",
           "gram_matrix"]

# Number of candidate groups per column in the top-k filter (see _topk_columns).
_GROUPS = 512
_FLT_LOWEST = np.float32(-np.finfo(np.float32).max)


def _topk_columns(block: np.ndarray, kk: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``kk`` largest finite entries of every column of ``block`` ``(n, b)`` (C-contiguous).

    Exact: rows are cut into groups of ``w`` consecutive rows; the ``kk``-th largest group
    maximum of a column is a value that at least ``kk`` entries reach, so every top-``kk`` entry
    is in a group whose maximum reaches it. Only those groups (``kk`` of about ``_GROUPS``) are
    gathered and sorted, which costs one max-reduction over the block instead of a partition.
    Returns ``(column, row, value)`` sorted by column, value descending, row ascending.
    """
    n, b = block.shape
    w = max(1, -(-n // max(_GROUPS, 4 * kk)))
    g = n // w
    main = g * w
    grouped = block[:main].reshape(g, w, b)
    gmax = grouped.max(axis=1)
    if main < n:
        gmax = np.concatenate([gmax, block[main:].max(axis=0, keepdims=True)])
    n_groups = gmax.shape[0]
    if kk <= n_groups:  # always, by the choice of w; the other branch only keeps this exact
        thr = np.partition(gmax, n_groups - kk, axis=0)[n_groups - kk]
        thr = np.maximum(thr, _FLT_LOWEST)  # a column short of finite values never returns -inf
    else:
        thr = np.full(b, _FLT_LOWEST, dtype=np.float32)
    gi, ci = np.nonzero(gmax >= thr)
    cols_out, rows_out, vals_out = [], [], []
    in_main = gi < g
    if in_main.any():
        g_sel, c_sel = gi[in_main], ci[in_main]
        vals = grouped[g_sel, :, c_sel]  # (pairs, w)
        p, off = np.nonzero(vals >= thr[c_sel][:, None])
        cols_out.append(c_sel[p])
        rows_out.append(g_sel[p] * w + off)
        vals_out.append(vals[p, off])
    if main < n and (~in_main).any():
        c_sel = ci[~in_main]
        vals = block[main:, c_sel].T  # (pairs, tail)
        p, off = np.nonzero(vals >= thr[c_sel][:, None])
        cols_out.append(c_sel[p])
        rows_out.append(main + off)
        vals_out.append(vals[p, off])
    if not cols_out:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    cols = np.concatenate(cols_out).astype(np.int64)
    rows = np.concatenate(rows_out).astype(np.int64)
    vals = np.concatenate(vals_out)
    order = np.lexsort((rows, -vals, cols))
    cols, rows, vals = cols[order], rows[order], vals[order]
    per_col = np.bincount(cols, minlength=b)
    rank = np.arange(cols.size) - (np.cumsum(per_col) - per_col)[cols]
    chosen = rank < kk
    return cols[chosen], rows[chosen], vals[chosen]


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
            c, r, v = _topk_columns(block, kk)
            return c + s, r, v

        if progress is not None:
            progress(f"{label}: {len(blocks)} blocks of {blocks[0][1] - blocks[0][0]} nodes")
        parts = run_blocks(blocks, produce, consume, produce_in_workers=produce_in_workers,
                            report=reporter(progress, label, len(blocks)))
    rows = [p[0] for p in parts]
    cols = [p[1] for p in parts]
    vals = [p[2].astype(np.float64) for p in parts]
    if rows:
        rows_all = np.concatenate(rows)
        valid = ~zero[rows_all]
        rows, cols, vals = [rows_all[valid]], [np.concatenate(cols)[valid]], [np.concatenate(vals)[valid]]
    selfs = np.arange(n) if knn_self else zero_ids
    rows.append(selfs)
    cols.append(selfs)
    vals.append(np.ones(selfs.size))
    return canonical_csr(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals) / k, n)


def item_knn_from_features(x: np.ndarray, k: int, knn_self: bool, block_size: Optional[int],
                            label: str, progress: Progress) -> sp.csr_matrix:
    n = x.shape[0]
    x = safe_scale(x)
    inv = inverse_norms(row_norms(x))
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
               block_size: Optional[int] = None, progress: Progress = None,
               label: str = "item_semantic") -> sp.csr_matrix:
    """Cosine kNN graph of the rows of ``features`` ``(n, d)``: eq. (2) + degree normalisation.

    Row ``i`` keeps its ``k`` most cosine-similar rows with weight ``cos / k``. With ``knn_self``
    (official) the row itself is one of the ``k``, with weight exactly ``1/k``; otherwise the ``k``
    most similar other rows. Ties: lower id first. Cosines can be negative and are kept as they
    are. An all-zero row has no direction: it is nobody's neighbour and gets only a self-loop
    ``1/k``. ``block_size``: columns per block (default: ~64 MB blocks). Returns CSR float32 ``(n, n)``.
    """
    x = as_features(features, np.asarray(features).shape[0], label)
    k = check_k(k, x.shape[0], "k")
    return item_knn_from_features(x, k, knn_self, block_size, label, progress)


def gram_matrix(x: np.ndarray) -> np.ndarray:
    """Raw item Gram ``X X^T`` ``(n_items, n_items)`` float32 (one BLAS call)."""
    x = safe_scale(x)
    # np.dot recognises X X^T and uses the symmetric rank-k update (half the work of matmul's gemm)
    return np.dot(x, x.T)
