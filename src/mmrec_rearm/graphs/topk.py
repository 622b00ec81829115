"""Exact top-k of every column or every row of a dense similarity block (the kNN graphs' selection).

Both functions skip most of the block with one max-reduction over groups of consecutive
entries, then sort only the few groups that can hold a top-k entry. Ties: lower index first.

Only numpy is imported here (no torch, no MMRec).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

__all__ = ["topk_columns", "topk_rows", "first_per_line"]

# Number of candidate groups per line in the top-k filter.
_GROUPS = 512
_FLT_LOWEST = np.float32(-np.finfo(np.float32).max)

Triplets = Tuple[np.ndarray, np.ndarray, np.ndarray]


def first_per_line(line: np.ndarray, other: np.ndarray, vals: np.ndarray, n_lines: int, kk: int) -> Triplets:
    """Sort entries by (line, value desc, other asc) and keep the first ``kk`` of each line."""
    order = np.lexsort((other, -vals, line))
    line, other, vals = line[order], other[order], vals[order]
    per_line = np.bincount(line, minlength=n_lines)
    rank = np.arange(line.size) - (np.cumsum(per_line) - per_line)[line]
    chosen = rank < kk
    return line[chosen], other[chosen], vals[chosen]


def topk_columns(block: np.ndarray, kk: int, floor: Optional[np.ndarray] = None) -> Triplets:
    """The ``kk`` largest finite entries of every column of ``block`` ``(n, b)`` (C-contiguous).

    Exact: rows are cut into groups of ``w`` consecutive rows; the ``kk``-th largest group
    maximum of a column is a value that at least ``kk`` entries reach, so every top-``kk`` entry
    is in a group whose maximum reaches it. Only those groups (``kk`` of about ``_GROUPS``) are
    gathered and sorted, which costs one max-reduction over the block instead of a partition.
    ``floor`` ``(b,)``: entries below it are not wanted (a column's ``kk``-th best value so far),
    so fewer groups are gathered. Returns ``(column, row, value)`` sorted by column, value
    descending, row ascending.
    """
    n, b = block.shape
    w = max(1, -(-n // max(_GROUPS, 4 * kk)))
    g = n // w
    main = g * w
    grouped = block[:main].reshape(g, w, b)
    gmax = grouped.max(axis=1)
    if main < n:
        gmax = np.concatenate([gmax, block[main:].max(axis=0, keepdims=True)])
    thr = _threshold(gmax, kk, 0, floor)
    gi, ci = np.nonzero(gmax >= thr)
    found = []  # (column, row, value) per gathered part
    in_main = gi < g
    if in_main.any():
        g_sel, c_sel = gi[in_main], ci[in_main]
        p, off, vals = _reaching(grouped[g_sel, :, c_sel], thr[c_sel])  # candidates (pairs, w)
        found.append((c_sel[p], g_sel[p] * w + off, vals))
    if main < n and (~in_main).any():
        c_sel = ci[~in_main]
        p, off, vals = _reaching(block[main:, c_sel].T, thr[c_sel])  # candidates (pairs, tail)
        found.append((c_sel[p], main + off, vals))
    return _best_per_line(found, b, kk, np.float32)


def topk_rows(block: np.ndarray, kk: int, floor: Optional[np.ndarray] = None) -> Triplets:
    """The ``kk`` largest finite entries of every row of ``block`` ``(m, n)`` (C-contiguous).

    The row-wise twin of :func:`topk_columns`. A row's groups are interleaved (group ``j`` holds
    the columns ``j, j + g, j + 2g, ...``), which keeps the max-reduction on contiguous memory;
    any split of a row into groups keeps the selection exact. Returns ``(row, column, value)``
    sorted by row, value descending, column ascending.
    """
    m, n = block.shape
    empty = np.zeros(0, dtype=np.int64)
    if m == 0 or n == 0:
        return empty, empty, np.zeros(0, dtype=block.dtype)
    g = min(n, max(_GROUPS, 4 * kk))
    w = n // g
    main = g * w
    item = block.strides[1]
    grouped = np.lib.stride_tricks.as_strided(  # (m, w, g) view of the first `main` columns
        block, shape=(m, w, g), strides=(block.strides[0], g * item, item), writeable=False)
    gmax = grouped.max(axis=1)
    if main < n:
        gmax = np.concatenate([gmax, block[:, main:].max(axis=1, keepdims=True)], axis=1)
    thr = _threshold(gmax, kk, 1, floor)
    ri, gi = np.nonzero(gmax >= thr[:, None])
    found = []  # (row, column, value) per gathered part
    in_main = gi < g
    if in_main.any():
        r_sel, g_sel = ri[in_main], gi[in_main]
        p, off, vals = _reaching(grouped[r_sel, :, g_sel], thr[r_sel])  # candidates (pairs, w)
        found.append((r_sel[p], off * g + g_sel[p], vals))
    if main < n and (~in_main).any():
        r_sel = ri[~in_main]
        p, off, vals = _reaching(block[r_sel, main:], thr[r_sel])  # candidates (pairs, tail)
        found.append((r_sel[p], main + off, vals))
    return _best_per_line(found, m, kk, block.dtype)


def _reaching(candidates: np.ndarray, limits: np.ndarray) -> Triplets:
    """The entries of ``candidates`` ``(pairs, w)`` that reach their pair's ``limits`` ``(pairs,)``
    -> (pair, offset in the pair's candidates, value)."""
    p, off = np.nonzero(candidates >= limits[:, None])
    return p, off, candidates[p, off]


def _best_per_line(found: list, n_lines: int, kk: int, empty_dtype) -> Triplets:
    """:func:`first_per_line` of the gathered parts ``found`` (a list of (line, other, value))."""
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=empty_dtype)
    lines, others, vals = (np.concatenate(part) for part in zip(*found))
    return first_per_line(lines.astype(np.int64), others.astype(np.int64), vals, n_lines, kk)


def _threshold(gmax: np.ndarray, kk: int, axis: int, floor: Optional[np.ndarray]) -> np.ndarray:
    """Per line, the ``kk``-th largest group maximum, raised to ``floor``; never ``-inf``.

    A line whose ``floor`` already leaves at most ``4 kk`` groups keeps the floor alone (it admits
    every entry that can still be chosen), which spares the partition of most lines once the
    floors have risen.
    """
    lines = np.ascontiguousarray(gmax.T) if axis == 0 else gmax  # partition along contiguous memory
    n_lines, n_groups = lines.shape
    thr = np.full(n_lines, _FLT_LOWEST, dtype=np.float32)
    todo = slice(None)
    if floor is not None:
        thr = np.maximum(thr, floor)
        todo = np.flatnonzero(np.count_nonzero(lines >= thr[:, None], axis=1) > 4 * kk)
    if kk <= n_groups:
        kth = np.partition(lines[todo], n_groups - kk, axis=1)[:, n_groups - kk]
        thr[todo] = np.maximum(thr[todo], kth)
    return thr
