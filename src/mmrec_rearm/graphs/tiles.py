"""Exact top-k of every row of a large cosine matrix, from square tiles of its upper triangle.

For many nodes a column block over all ``n`` rows gets too narrow to keep BLAS busy (its width
shrinks like ``1 / n``) and reads every vector once per block. Here the unit vectors are cut into
tiles of ``T`` nodes; the tile ``S = V_p V_q^T`` is computed once for each pair ``p <= q`` and
serves both sides: the nodes of ``q`` take their best neighbours among ``p`` from its columns,
the nodes of ``p`` among ``q`` from its rows. That is half the multiply-adds of the full matrix,
in ``(T, T)`` tiles of fixed size. Each node keeps a running best-``kk`` list; candidates below its
current ``kk``-th value are dropped at once, so memory stays ``O(n kk)`` plus one tile.

Every node's candidates are complete once the tiles of its own row ``p`` are done, so its list is
final then and freed. Selection is exact (float32 cosines; ties: lower neighbour id first).

Only numpy is imported here (no torch, no MMRec).
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import numpy as np

from .blocks import Progress, reporter
from .topk import first_per_line, topk_columns, topk_rows

__all__ = ["TILE_FROM", "tile_bounds", "symmetric_topk"]

#: Column blocks are used while they hold at least this many columns (``BLOCK_BYTES / (4 n)``,
#: i.e. up to 65,536 nodes); beyond, square tiles.
TILE_FROM = 256
#: Side of a square tile (a 64 MB float32 tile).
TILE_SIZE = 4096

Triplets = Tuple[np.ndarray, np.ndarray, np.ndarray]


def tile_bounds(n: int, tile: int) -> List[Tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``0..n`` in tiles of ``tile`` nodes."""
    return [(s, min(n, s + tile)) for s in range(0, n, tile)]


class _Best:
    """Running best-``kk`` neighbours of the nodes ``start..stop-1`` (exact, ties: lower id)."""

    def __init__(self, start: int, stop: int, kk: int):
        self.start, self.size, self.kk = start, stop - start, kk
        self.parts: List[Triplets] = []
        self.count = 0
        # a candidate below its node's current kk-th value can never be chosen
        self.floor = np.full(self.size, -np.inf, dtype=np.float32)

    def add(self, node: np.ndarray, neighbour: np.ndarray, value: np.ndarray) -> None:
        keep = value >= self.floor[node]
        if not keep.all():
            node, neighbour, value = node[keep], neighbour[keep], value[keep]
        if node.size:
            self.parts.append((node, neighbour, value))
            self.count += node.size
            if self.count > 3 * self.size * self.kk:
                self._compact()

    def _compact(self) -> Triplets:
        node, neighbour, value = (np.concatenate([p[i] for p in self.parts]) for i in range(3))
        node, neighbour, value = first_per_line(node, neighbour, value, self.size, self.kk)
        self.parts, self.count = [(node, neighbour, value)], node.size
        per_node = np.bincount(node, minlength=self.size)
        full = per_node >= self.kk
        last = np.cumsum(per_node) - 1  # the kk-th (last kept) entry of a full node
        self.floor[full] = value[last[full]]
        return node, neighbour, value

    def result(self) -> Triplets:
        """``(node, neighbour, value)``, global ids, by node then value desc, neighbour asc."""
        if not self.parts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=np.float32)
        node, neighbour, value = self._compact()
        self.parts = []
        return node + self.start, neighbour, value


def symmetric_topk(n: int, kk: int, zero: np.ndarray, vectors: Callable[[int, int], np.ndarray], *,
                   tile: int = TILE_SIZE, label: str = "knn", progress: Progress = None) -> List[Triplets]:
    """Each node's ``kk`` most cosine-similar other nodes, from tiles of the upper triangle.

    ``vectors(s, e)`` returns the unit rows ``(e - s, d)`` float32 of nodes ``s..e-1`` (any rows
    for zero-vector nodes: ``zero`` masks them, they are nobody's neighbour and get no list).
    Returns one ``(node, neighbour, value)`` triplet of int64 / int64 / float32 arrays per tile
    of nodes, in node order; within a node, value descending then neighbour ascending.
    """
    bounds = tile_bounds(n, tile)
    best = [_Best(s, e, kk) for s, e in bounds]
    out: List[Triplets] = []
    report = reporter(progress, label, len(bounds))
    if progress is not None:
        progress(f"{label}: {len(bounds)} x {len(bounds)} / 2 symmetric tiles of {min(tile, n)} nodes")
    for p, (ps, pe) in enumerate(bounds):
        left = vectors(ps, pe)
        zero_p = np.flatnonzero(zero[ps:pe])
        for q in range(p, len(bounds)):
            qs, qe = bounds[q]
            right = left if q == p else vectors(qs, qe)
            sims = left @ right.T  # (T_p, T_q) cosines
            sims[zero_p, :] = -np.inf
            sims[:, np.flatnonzero(zero[qs:qe])] = -np.inf
            if q == p:
                np.fill_diagonal(sims, -np.inf)  # a node is not its own neighbour here
            # nodes of q, neighbours among p (columns); knn._topk_columns is the column twin
            c, r, v = topk_columns(sims, kk, best[q].floor)
            best[q].add(c, r + ps, v)
            if q != p:  # nodes of p, neighbours among q (rows)
                r, c, v = topk_rows(sims, kk, best[p].floor)
                best[p].add(r, c + qs, v)
        out.append(best[p].result())
        best[p] = None  # type: ignore[call-overload]
        report(p + 1)
    return out
