"""Co-occurrence top-k graphs (paper eq. 1 + softmax), with duplicate padding and the popularity fallback.

Only numpy, scipy and :mod:`mmrec_rearm.errors` are imported here (no torch, no MMRec).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import scipy.sparse as sp

from ..errors import GraphParamError
from .blocks import Progress, reporter, run_blocks
from .inputs import binary_matrix, canonical_csr, check_k
from .params import EMPTIES, PADDINGS, SIDES

__all__ = ["COOC_CANDIDATES", "COOC_BLOCK_ENTRIES", "popular_nodes", "cooccurrence_counts_topk",
           "cooccurrence_topk"]

#: The official code keeps at most this many co-occurring neighbours per row before cutting to k.
COOC_CANDIDATES = 200
#: Budget (entries) of one block of the sparse co-occurrence product.
COOC_BLOCK_ENTRIES = 4_000_000


def popular_nodes(degrees: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` nodes of largest training degree and the weights given to them.

    Order: degree descending, then id ascending. Weights: ``softmax(deg_j / sum(deg))`` over the
    ``k`` chosen nodes, as the official code weighs rows without any co-occurring neighbour
    (uniform ``1/k`` when every degree is 0). Returns ``(ids int64 (k,), weights float64 (k,))``.
    """
    degrees = np.asarray(degrees, dtype=np.int64)
    order = np.lexsort((np.arange(degrees.size), -degrees))[:k]
    chosen = degrees[order].astype(np.float64)
    total = chosen.sum()
    frac = chosen / total if total > 0 else np.zeros_like(chosen)
    weights = np.exp(frac - frac.max())
    return order.astype(np.int64), weights / weights.sum()


def _pad_draws(seed: int, side: str, highs: np.ndarray) -> np.ndarray:
    """One uniform index in ``[0, h)`` per entry of ``highs``, reproducible from (seed, side).

    Uses the raw PCG64 bit stream (stable across numpy versions, unlike Generator methods), 53
    bits per draw.
    """
    if highs.size == 0:
        return np.zeros(0, dtype=np.int64)
    stream = np.random.PCG64(np.random.SeedSequence([int(seed), SIDES.index(side)]))
    raw = stream.random_raw(highs.size)
    unit = (raw >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)
    return np.minimum((unit * highs).astype(np.int64), highs - 1)


def _cooc_blocks(upper: np.ndarray, block_size: Optional[int]) -> List[Tuple[int, int]]:
    """Row ranges whose co-occurrence products hold at most ~COOC_BLOCK_ENTRIES entries."""
    n = upper.size
    if block_size is not None:
        return [(s, min(n, s + block_size)) for s in range(0, n, block_size)] or [(0, 0)]
    bounds = [0]
    cum = np.cumsum(upper)
    while bounds[-1] < n:
        start = bounds[-1]
        base = cum[start - 1] if start else 0
        stop = int(np.searchsorted(cum, base + COOC_BLOCK_ENTRIES, side="right"))
        bounds.append(min(n, max(stop, start + 1)))
    return list(zip(bounds[:-1], bounds[1:]))


def _rank_by_count(local: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort entries by (row, count desc, col asc); int64 in, int64 out."""
    if local.size == 0:
        return local, cols, vals
    top = int(vals.max())
    if (int(local.max()) + 1) * (top + 1) * n < 2 ** 62:
        # one int64 key per entry: a single np.sort, decoded afterwards
        key = (local * (top + 1) + (top - vals)) * n + cols
        key.sort()
        rest = key // n
        return rest // (top + 1), key % n, top - rest % (top + 1)
    order = np.lexsort((cols, -vals, local))  # astronomically large graphs: overflow-free
    return local[order], cols[order], vals[order]


def _top_counts(counts: sp.csr_matrix, start: int, keep: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of a co-occurrence block: its ``keep`` largest counts (count desc, id asc), self excluded.

    Returns ``(row, col, count)`` int64 arrays, rows ascending and, within a row, in rank order.
    Co-occurrence counts are mostly 1 (97% of Baby's user pairs), so only the entries with a count
    of 2 or more are sorted; a row short of ``keep`` of them is completed with its count-1
    neighbours of lowest id, read off the column-sorted row without sorting.
    """
    n_rows, n = counts.shape
    counts.sort_indices()
    cols, vals = counts.indices, counts.data  # int32, the block is ours to modify
    lengths = np.diff(counts.indptr)
    local = np.repeat(np.arange(n_rows, dtype=np.int32), lengths)
    vals[cols == local + start] = 0  # a node is not its own neighbour
    high = np.flatnonzero(vals >= 2)
    h_row, h_col, h_val = _rank_by_count(local[high].astype(np.int64), cols[high].astype(np.int64),
                                         vals[high].astype(np.int64), n)
    h_count = np.bincount(h_row, minlength=n_rows)
    h_rank = np.arange(h_row.size) - (np.cumsum(h_count) - h_count)[h_row]
    h_take = h_rank < keep
    h_kept = np.minimum(h_count, keep)
    # rank of each count-1 entry among its row's count-1 entries (= column order)
    ones = vals == 1
    seen = np.cumsum(ones, dtype=np.int64)
    before_row = np.concatenate(([0], seen))[counts.indptr[:-1]]
    rank = seen - np.repeat(before_row, lengths)  # 1-based on count-1 entries
    o_pos = np.flatnonzero(ones & (rank <= np.repeat(keep - h_kept, lengths)))
    o_row = local[o_pos].astype(np.int64)
    o_count = np.bincount(o_row, minlength=n_rows)
    out_count = h_kept + o_count
    first = np.cumsum(out_count) - out_count
    size = int(out_count.sum())
    rows_out = np.empty(size, dtype=np.int64)
    cols_out = np.empty(size, dtype=np.int64)
    vals_out = np.empty(size, dtype=np.int64)
    pos = first[h_row[h_take]] + h_rank[h_take]
    rows_out[pos], cols_out[pos], vals_out[pos] = h_row[h_take], h_col[h_take], h_val[h_take]
    pos = first[o_row] + h_kept[o_row] + rank[o_pos] - 1
    rows_out[pos], cols_out[pos], vals_out[pos] = o_row, cols[o_pos], 1
    return rows_out + start, cols_out, vals_out


def cooccurrence_counts_topk(interactions, keep: int, *, side: str = "user",
                             block_size: Optional[int] = None, progress: Progress = None
                             ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each node's ``keep`` largest co-occurrence counts (the raw counts of eq. 1), self excluded.

    ``interactions``: ``(n_users, n_items)`` training matrix (non-zero = interaction); ``side``
    "user" counts common items of two users, "item" common users of two items. Computed from the
    sparse product ``R R^T`` (items: ``R^T R``) a block of rows at a time, blocks bounded to
    ~:data:`COOC_BLOCK_ENTRIES` product entries, so memory grows with the interactions, not n^2.

    Returns ``(rows, cols, counts)``, int64 arrays of equal length: rows ascending, within a row
    count descending then column ascending; a row has ``min(keep, its co-occurring nodes)``
    entries. Shared by :func:`cooccurrence_topk` and DRAGON's user graph file (experiments).
    """
    if side not in SIDES:
        raise GraphParamError(f"side={side!r}: must be 'user' or 'item'.")
    if keep < 1:
        raise GraphParamError(f"keep={keep}: the number of co-occurring nodes kept per row must be at least 1.")
    binary = binary_matrix(interactions)
    if side == "item":
        binary = binary.T.tocsr()
    # int32 counts are exact; the transposed copy makes each block one sparse product
    nodes = sp.csr_matrix((np.ones(binary.nnz, dtype=np.int32), binary.indices, binary.indptr),
                          shape=binary.shape)
    others = nodes.T.tocsr()
    upper = nodes @ np.diff(others.indptr).astype(np.int64)  # entries of each product row, at most
    blocks = _cooc_blocks(np.asarray(upper, dtype=np.int64), block_size)

    def produce(bounds):
        s, e = bounds
        return (nodes[s:e] @ others).tocsr()

    def consume(bounds, counts):
        return _top_counts(counts, bounds[0], keep)

    parts = run_blocks(blocks, produce, consume, produce_in_workers=True,
                        report=reporter(progress, f"{side}_cooccurrence", len(blocks)))
    empty = np.zeros(0, dtype=np.int64)
    return tuple(np.concatenate([p[i] for p in parts] or [empty]) for i in range(3))  # type: ignore[return-value]


def cooccurrence_topk(interactions, k: int, *, side: str = "user", padding: str = "duplicate",
                      empty: str = "popular", seed: int = 0, block_size: Optional[int] = None,
                      progress: Progress = None) -> sp.csr_matrix:
    """Co-occurrence graph of users (``side="user"``) or items (``side="item"``); eq. (1) + softmax.

    ``interactions``: ``(n_users, n_items)`` training matrix (non-zero = interaction). The weight
    between two users is the number of training items both interacted with (for items: the number
    of common users); a node is never its own co-occurrence neighbour. Each row keeps its ``k``
    largest counts (at most :data:`COOC_CANDIDATES` candidates, as the official code; ties: lower
    id first) and weighs them by ``softmax(counts)`` over the row, so every non-empty row sums to 1.

    Rows with ``0 < m < k`` neighbours: ``padding="duplicate"`` draws ``k - m`` extra copies of
    its kept neighbours (uniformly, reproducible from ``seed`` and ``side``) and takes the softmax
    over the ``k`` padded values, repeated neighbours adding up (official); ``"none"`` keeps the
    ``m`` neighbours. Rows with no neighbour: ``empty="popular"`` links to the ``k`` nodes of
    largest training degree (:func:`popular_nodes`, possibly the node itself), ``"self"`` gives a
    self-loop of weight 1, ``"none"`` leaves the row empty.

    Returns CSR float32 ``(n, n)`` with ``n = n_users`` or ``n_items``.
    """
    if side not in SIDES:
        raise GraphParamError(f"side={side!r}: must be 'user' or 'item'.")
    if padding not in PADDINGS:
        raise GraphParamError(f"padding={padding!r}: must be one of {PADDINGS}.")
    if empty not in EMPTIES:
        raise GraphParamError(f"empty={empty!r}: must be one of {EMPTIES}.")
    binary = binary_matrix(interactions)
    n = binary.shape[1] if side == "item" else binary.shape[0]
    k = check_k(k, n, "user_knn_k" if side == "user" else "item_knn_k")
    degrees = np.diff((binary.T.tocsr() if side == "item" else binary).indptr).astype(np.int64)
    rows, cols, counts = cooccurrence_counts_topk(binary, min(k, COOC_CANDIDATES), side=side,
                                                  block_size=block_size, progress=progress)
    counts = counts.astype(np.float64)
    kept = np.bincount(rows, minlength=n)

    row_parts, col_parts, val_parts = [rows], [cols], [counts]
    if padding == "duplicate":
        short = np.flatnonzero((kept > 0) & (kept < k))
        if short.size:
            first = np.cumsum(kept) - kept
            extra = k - kept[short]
            pick = _pad_draws(seed, side, np.repeat(kept[short], extra))
            src = np.repeat(first[short], extra) + pick
            row_parts.append(np.repeat(short, extra))
            col_parts.append(cols[src])
            val_parts.append(counts[src])
    rows = np.concatenate(row_parts)
    cols = np.concatenate(col_parts)
    raw = np.concatenate(val_parts)
    # softmax per row over the (padded) raw counts, shifted by the row maximum for stability;
    # the first kept entry of a row is its largest count and padding only repeats kept ones
    row_max = np.zeros(n)
    has = kept > 0
    row_max[has] = counts[(np.cumsum(kept) - kept)[has]]
    weights = np.exp(raw - row_max[rows])
    weights /= np.bincount(rows, weights=weights, minlength=n)[rows]

    lonely = np.flatnonzero(kept == 0)
    if lonely.size and empty != "none":
        if empty == "popular":
            ids, w = popular_nodes(degrees, k)
            rows = np.concatenate([rows, np.repeat(lonely, k)])
            cols = np.concatenate([cols, np.tile(ids, lonely.size)])
            weights = np.concatenate([weights, np.tile(w, lonely.size)])
        else:
            rows = np.concatenate([rows, lonely])
            cols = np.concatenate([cols, lonely])
            weights = np.concatenate([weights, np.ones(lonely.size)])
    return canonical_csr(rows, cols, weights, n)
