"""The four homogeneous graphs of REARM and their fusions (paper Sec. 4.2), as pure functions.

Inputs are the training interactions ``(n_users, n_items)`` (any non-zero entry is one
interaction) and one ``(n_items, d_m)`` feature array per modality. Every output is a scipy CSR
matrix, float32, rows = node ids in order, canonical (sorted column indices, no duplicates):

* co-occurrence graphs (eq. 1 + softmax): :func:`cooccurrence_topk`. Users are linked by the
  number of training items they share, items by the number of training users they share; each row
  keeps its ``k`` largest counts and weighs them by a softmax over those counts.
* semantic / interest graphs (eq. 2 + degree normalisation): :func:`cosine_knn` for items (raw
  item features) and :func:`user_interest_knn` for users (the mean of the user's training items'
  features, Sec. 4.1). Each row keeps its ``k`` most cosine-similar nodes (itself included by
  default) with weight ``cosine / k``, which is ``D^-1/2 S D^-1/2`` for the 0/1 degree ``D = k``.
* fusions (Sec. 4.2.2 and 4.2.3): :func:`fuse_graphs`, a weighted sum.

:func:`build_graphs` wires them under a :class:`GraphParams` into :class:`HomogeneousGraphs`.

Memory grows with the interactions and with ``n * k``, never with ``n^2``: similarities are
computed a block of columns at a time and reduced to their top-k at once (exact float32, no
approximate search). The user interest graph has two exact routes, chosen by estimated cost:
``"features"`` multiplies the user feature sums ``Y = R X`` block by block (``n_users^2 d``
multiply-adds); ``"gram"`` forms the item Gram matrix ``G = X X^T`` once and gets each block of
``Y Y^T`` as ``R_b G R^T`` with two sparse products (``n_items^2 d`` plus ``nnz(R) (n_items +
n_users)``), and the item semantic graph of the same modality reuses ``G``. docs/choices.md
("Graphs") lists every point where we differ from the official code.

Only numpy, scipy and :mod:`mmrec_rearm.errors` are imported here (no torch, no MMRec).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.sparse as sp

from .errors import DatasetError, GraphParamError

__all__ = [
    "GraphParams",
    "HomogeneousGraphs",
    "build_graphs",
    "cooccurrence_topk",
    "cosine_knn",
    "user_interest_knn",
    "user_interest_features",
    "fuse_graphs",
    "popular_nodes",
    "empty_graph",
    "choose_user_route",
    "COOC_CANDIDATES",
]

Progress = Optional[Callable[[str], None]]
FeatureInput = Union[Sequence[np.ndarray], Mapping[str, np.ndarray]]

#: The official code keeps at most this many co-occurring neighbours per row before cutting to k.
COOC_CANDIDATES = 200
#: Budget (bytes) of one dense similarity block (n x block columns, float32).
BLOCK_BYTES = 64 << 20
#: Budget (entries) of one block of the sparse co-occurrence product.
COOC_BLOCK_ENTRIES = 4_000_000
#: The "gram" route of the user interest graph is never taken when G would exceed this.
GRAM_MAX_BYTES = 2 << 30
#: Cost of one sparse multiply-add (scipy, per thread) in units of one BLAS float32 multiply-add.
#: Measured on the 2-core reference box: ~160 G BLAS MAC/s against ~1-3 G sparse MAC/s (the
#: gram route's two products on Baby / Sports, memory-bound).
SPARSE_MAC_COST = 100.0
# Number of candidate groups per column in the top-k filter (see _topk_columns).
_GROUPS = 512
# Most user blocks handled at once by the gram route (keeps R G's block cache-resident).
_GRAM_BLOCK_MAX = 256
_PADDINGS = ("duplicate", "none")
_EMPTIES = ("popular", "self", "none")
_SIDES = ("user", "item")
_FLT_LOWEST = np.float32(-np.finfo(np.float32).max)


# --------------------------------------------------------------------------------------------
# Parameters


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return _is_int(value) or (isinstance(value, (float, np.floating)) and not isinstance(value, bool))


@dataclass(frozen=True)
class GraphParams:
    """Parameters of the homogeneous graphs; the defaults are REARM's Baby settings.

    Validated on construction (:class:`~mmrec_rearm.errors.GraphParamError` naming the field, the
    value and the allowed range); numbers are normalised (``1`` -> ``1.0`` for weights, lists ->
    tuples) so that equal settings give equal :meth:`to_dict` output and cache keys. Limits that
    depend on the data (``k`` below the node count, one explicit weight per modality) are checked
    by :func:`build_graphs`.
    """

    user_knn_k: int = 40      # k of the user co-occurrence AND user interest graphs
    item_knn_k: int = 10      # k of the item co-occurrence AND item semantic graphs
    u_mm_image_weight: float = 0.2   # weight of the FIRST modality in the user interest graph
    i_mm_image_weight: float = 0.0   # weight of the FIRST modality in the item semantic graph
    uu_co_weight: float = 0.4        # user homogeneous = w * co-occurrence + (1 - w) * interest
    ii_co_weight: float = 0.2        # item homogeneous = w * co-occurrence + (1 - w) * semantic
    u_modal_weights: Optional[Tuple[float, ...]] = None   # explicit per-modality weights, sum 1
    i_modal_weights: Optional[Tuple[float, ...]] = None
    cooc_padding: str = "duplicate"  # rows with 0 < neighbours < k: "duplicate" | "none"
    cooc_empty: str = "popular"      # rows without co-occurring neighbour: "popular" | "self" | "none"
    knn_self: bool = True            # the node itself is one of its k most similar nodes
    seed: int = 0                    # duplicate padding draws

    def __post_init__(self) -> None:
        for name in ("user_knn_k", "item_knn_k"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise GraphParamError(
                    f"GraphParams.{name}={value!r}: must be an integer >= 1 (the number of "
                    "neighbours kept per node).")
            object.__setattr__(self, name, int(value))
        if not _is_int(self.seed) or self.seed < 0:
            raise GraphParamError(f"GraphParams.seed={self.seed!r}: must be an integer >= 0.")
        object.__setattr__(self, "seed", int(self.seed))
        for name in ("u_mm_image_weight", "i_mm_image_weight", "uu_co_weight", "ii_co_weight"):
            value = getattr(self, name)
            if not _is_real(value) or not (0.0 <= float(value) <= 1.0):
                raise GraphParamError(
                    f"GraphParams.{name}={value!r}: must be a number in [0, 1].")
            object.__setattr__(self, name, float(value))
        for name in ("u_modal_weights", "i_modal_weights"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise GraphParamError(
                    f"GraphParams.{name}={value!r}: must be None or a sequence of numbers "
                    "(one weight per modality, in modality order, summing to 1).")
            weights = tuple(value)
            if not weights or not all(_is_real(w) and 0.0 <= float(w) <= 1.0 for w in weights):
                raise GraphParamError(
                    f"GraphParams.{name}={value!r}: every weight must be a number in [0, 1] and "
                    "at least one must be given.")
            weights = tuple(float(w) for w in weights)
            if abs(math.fsum(weights) - 1.0) > 1e-6:
                raise GraphParamError(
                    f"GraphParams.{name}={weights!r}: the weights sum to {math.fsum(weights):.6g}, "
                    "not 1; rescale them.")
            object.__setattr__(self, name, weights)
        if self.cooc_padding not in _PADDINGS:
            raise GraphParamError(
                f"GraphParams.cooc_padding={self.cooc_padding!r}: must be one of {_PADDINGS}.")
        if self.cooc_empty not in _EMPTIES:
            raise GraphParamError(
                f"GraphParams.cooc_empty={self.cooc_empty!r}: must be one of {_EMPTIES}.")
        if not isinstance(self.knn_self, (bool, np.bool_)):
            raise GraphParamError(f"GraphParams.knn_self={self.knn_self!r}: must be True or False.")
        object.__setattr__(self, "knn_self", bool(self.knn_self))

    def modal_weights(self, side: str, n_modalities: int) -> Tuple[float, ...]:
        """Fusion weight of each modality on ``side`` ("user" or "item"), summing to 1.

        Explicit ``u_modal_weights`` / ``i_modal_weights`` win (their length must be
        ``n_modalities``). Otherwise one modality gets 1; the first of several gets
        ``u_mm_image_weight`` / ``i_mm_image_weight`` and the others share the rest equally (with
        two modalities: ``(w, 1 - w)``, the official rule).
        """
        if side not in _SIDES:
            raise GraphParamError(f"side={side!r}: must be 'user' or 'item'.")
        if not _is_int(n_modalities) or n_modalities < 0:
            raise GraphParamError(f"n_modalities={n_modalities!r}: must be an integer >= 0.")
        prefix = side[0]
        explicit = getattr(self, f"{prefix}_modal_weights")
        if explicit is not None:
            if len(explicit) != n_modalities:
                raise GraphParamError(
                    f"GraphParams.{prefix}_modal_weights={explicit!r} has {len(explicit)} weights "
                    f"but the data has {n_modalities} modalities; give one weight per modality.")
            return explicit
        if n_modalities == 0:
            return ()
        if n_modalities == 1:
            return (1.0,)
        first = getattr(self, f"{prefix}_mm_image_weight")
        rest = (1.0 - first) / (n_modalities - 1)
        return (first,) + (rest,) * (n_modalities - 1)

    def to_dict(self) -> dict:
        """Plain JSON-ready mapping (tuples as lists), the canonical form used in fingerprints."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> "GraphParams":
        """Build from a mapping of field names (e.g. a config section); unknown names are refused."""
        if not isinstance(mapping, Mapping):
            raise GraphParamError(f"graph parameters must be a mapping, got {type(mapping).__name__}.")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in mapping if k not in names)
        if unknown:
            raise GraphParamError(
                f"unknown graph parameter(s) {', '.join(unknown)}; valid names: {', '.join(names)}.")
        return cls(**dict(mapping))


@dataclass
class HomogeneousGraphs:
    """The homogeneous graphs of one dataset (scipy CSR float32, canonical).

    ``user_*``: ``(n_users, n_users)``; ``item_*``: ``(n_items, n_items)``. A graph whose fusion
    weight is 0 is an empty matrix of the right shape. ``seconds``: build time per graph name; the
    time of an item Gram shared by both sides is counted in ``user_interest``.
    """

    user_cooccurrence: sp.csr_matrix
    user_interest: sp.csr_matrix
    item_cooccurrence: sp.csr_matrix
    item_semantic: sp.csr_matrix
    user_homogeneous: sp.csr_matrix
    item_homogeneous: sp.csr_matrix
    seconds: Dict[str, float] = field(default_factory=dict)

    GRAPH_NAMES: ClassVar[Tuple[str, ...]] = (
        "user_cooccurrence", "user_interest", "item_cooccurrence", "item_semantic",
        "user_homogeneous", "item_homogeneous")


# --------------------------------------------------------------------------------------------
# Input checks and small helpers


def empty_graph(n: int) -> sp.csr_matrix:
    """An ``(n, n)`` CSR float32 matrix without entries (a skipped graph)."""
    return sp.csr_matrix((n, n), dtype=np.float32)


def _canonical(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n: int) -> sp.csr_matrix:
    """CSR float32 ``(n, n)`` from COO triplets; repeated (row, col) pairs are summed (in float64)."""
    m = sp.csr_matrix((np.asarray(values, dtype=np.float64), (rows, cols)), shape=(n, n))
    m.sum_duplicates()
    m.sort_indices()
    return m.astype(np.float32)


def _binary(interactions, where: str = "interactions") -> sp.csr_matrix:
    """0/1 float32 CSR copy of ``interactions`` (canonical); any stored non-zero is one interaction."""
    if sp.issparse(interactions):
        m = sp.csr_matrix(interactions, copy=True)
    else:
        arr = np.asarray(interactions)
        if arr.ndim != 2:
            raise DatasetError(f"{where}: expected a 2-D (n_users, n_items) matrix, got shape {arr.shape}.")
        m = sp.csr_matrix(arr)
    if m.ndim != 2:
        raise DatasetError(f"{where}: expected a 2-D (n_users, n_items) matrix, got shape {m.shape}.")
    if m.nnz and not np.isfinite(m.data).all():
        raise DatasetError(f"{where}: contains NaN or inf; pass the 0/1 training matrix.")
    m.sum_duplicates()
    m.eliminate_zeros()
    m.data = np.ones(m.nnz, dtype=np.float32)
    m = m.astype(np.float32, copy=False)
    return m


def _as_features(features: np.ndarray, n_rows: int, name: str) -> np.ndarray:
    """float32 C-contiguous ``(n_rows, d)`` view/copy of one modality, refusing NaN / inf."""
    arr = np.asarray(features)
    if arr.ndim != 2 or arr.shape[0] != n_rows or arr.shape[1] < 1:
        raise DatasetError(
            f"features[{name}]: shape {arr.shape}, expected ({n_rows}, d) with d >= 1 "
            "(one row per item).")
    if arr.dtype.kind not in "fiu":
        raise DatasetError(f"features[{name}]: dtype {arr.dtype} is not a real number type.")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: refused below
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size:
        # max / min propagate NaN and expose +-inf without a temporary of the array's size
        hi, lo = float(arr.max()), float(arr.min())
        if not (math.isfinite(hi) and math.isfinite(lo)):
            bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
            raise DatasetError(
                f"features[{name}]: non-finite value (NaN or inf, possibly after casting to "
                f"float32) in row {int(bad[0])}; clean or re-extract the features.")
    return arr


def _safe_scale(arr: np.ndarray) -> np.ndarray:
    """``arr`` times a power of two bringing its largest magnitude near 1, if it is extreme.

    Cosines are scale-invariant and a power-of-two factor is exact, so this only protects the
    float32 products (``X X^T``, ``R X``) from overflow or underflow; ordinary features pass as is.
    """
    if not arr.size:
        return arr
    amax = max(abs(float(arr.max())), abs(float(arr.min())))
    if amax == 0.0 or 2.0 ** -24 <= amax <= 2.0 ** 24:
        return arr
    return arr * np.float32(2.0 ** -math.frexp(amax)[1])


def _row_norms(arr: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Euclidean row norms in float64 (no underflow of squares of float32 values)."""
    out = np.empty(arr.shape[0], dtype=np.float64)
    for s in range(0, arr.shape[0], chunk):
        part = arr[s:s + chunk].astype(np.float64)
        out[s:s + chunk] = np.sqrt(np.einsum("ij,ij->i", part, part))
    return out


def _inverse(norms: np.ndarray) -> np.ndarray:
    """float32 ``1 / norm`` with 0 for zero norms (those nodes get a self-loop only)."""
    inv = np.zeros(norms.shape, dtype=np.float64)
    np.divide(1.0, norms, out=inv, where=norms > 0)
    return inv.astype(np.float32)


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def _check_k(k, n: int, name: str) -> int:
    if not _is_int(k) or k < 1:
        raise GraphParamError(f"{name}={k!r}: must be an integer >= 1.")
    if k >= n:
        raise GraphParamError(
            f"{name}={k} but there are only {n} nodes on that side; k must be smaller than the "
            f"number of nodes (choose {name} <= {n - 1}).")
    return int(k)


def _reporter(progress: Progress, label: str, n_blocks: int) -> Callable[[int], None]:
    """Calls ``progress`` for about 20 of the ``n_blocks`` blocks (and the last one)."""
    step = max(1, n_blocks // 20)

    def report(done: int) -> None:
        if progress is not None and (done % step == 0 or done == n_blocks):
            progress(f"{label}: block {done}/{n_blocks}")
    return report


def _run_blocks(tasks: Sequence, produce: Callable, consume: Callable, *,
                produce_in_workers: bool, report: Callable[[int], None]) -> list:
    """``[consume(task, produce(task)) for task in tasks]``, results in the order of ``tasks``.

    With ``produce_in_workers`` (sparse products and numpy reductions, which release the GIL)
    the tasks run on a few threads. Otherwise ``produce`` calls multi-threaded BLAS and everything
    runs here, one task after the other: overlapping the reductions with BLAS oversubscribed the
    cores (OpenBLAS threads spin while waiting) and was slower on the reference box.
    """
    workers = _workers() if produce_in_workers else 1
    if workers == 1 or len(tasks) == 1:
        out = []
        for i, task in enumerate(tasks):
            out.append(consume(task, produce(task)))
            report(i + 1)
        return out
    results = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(lambda t=task: consume(t, produce(t))) for task in tasks]
        for i, fut in enumerate(futures):
            results.append(fut.result())
            report(i + 1)
    return results


# --------------------------------------------------------------------------------------------
# Co-occurrence graphs (eq. 1 + softmax)


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
    stream = np.random.PCG64(np.random.SeedSequence([int(seed), _SIDES.index(side)]))
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
    if side not in _SIDES:
        raise GraphParamError(f"side={side!r}: must be 'user' or 'item'.")
    if keep < 1:
        raise GraphParamError(f"keep={keep}: the number of co-occurring nodes kept per row must be at least 1.")
    binary = _binary(interactions)
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

    parts = _run_blocks(blocks, produce, consume, produce_in_workers=True,
                        report=_reporter(progress, f"{side}_cooccurrence", len(blocks)))
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
    if side not in _SIDES:
        raise GraphParamError(f"side={side!r}: must be 'user' or 'item'.")
    if padding not in _PADDINGS:
        raise GraphParamError(f"padding={padding!r}: must be one of {_PADDINGS}.")
    if empty not in _EMPTIES:
        raise GraphParamError(f"empty={empty!r}: must be one of {_EMPTIES}.")
    binary = _binary(interactions)
    n = binary.shape[1] if side == "item" else binary.shape[0]
    k = _check_k(k, n, "user_knn_k" if side == "user" else "item_knn_k")
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
    return _canonical(rows, cols, weights, n)


# --------------------------------------------------------------------------------------------
# kNN graphs (eq. 2 + degree normalisation)


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


def _column_blocks(n: int, per_column_bytes: int, block_size: Optional[int], cap: int = 4096) -> List[Tuple[int, int]]:
    if block_size is None:
        block_size = int(min(cap, max(16, BLOCK_BYTES // max(1, per_column_bytes))))
    return [(s, min(n, s + block_size)) for s in range(0, n, block_size)]


def _knn_graph(n: int, k: int, knn_self: bool, zero: np.ndarray, blocks: List[Tuple[int, int]],
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
        parts = _run_blocks(blocks, produce, consume, produce_in_workers=produce_in_workers,
                            report=_reporter(progress, label, len(blocks)))
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
    return _canonical(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals) / k, n)


def _item_knn_from_features(x: np.ndarray, k: int, knn_self: bool, block_size: Optional[int],
                            label: str, progress: Progress) -> sp.csr_matrix:
    n = x.shape[0]
    x = _safe_scale(x)
    inv = _inverse(_row_norms(x))
    blocks = _column_blocks(n, 4 * n, block_size)

    def produce(bounds):
        s, e = bounds
        block = x @ (x[s:e] * inv[s:e, None]).T  # (n, b): x_i . x_hat_j
        block *= inv[:, None]
        return block

    return _knn_graph(n, k, knn_self, inv == 0, blocks, produce, produce_in_workers=False,
                      label=label, progress=progress)


def _item_knn_from_gram(gram: np.ndarray, k: int, knn_self: bool, block_size: Optional[int],
                        label: str, progress: Progress) -> sp.csr_matrix:
    n = gram.shape[0]
    norms = np.sqrt(np.maximum(np.diag(gram).astype(np.float64), 0.0))
    inv = _inverse(norms)
    blocks = _column_blocks(n, 4 * n, block_size)

    def produce(bounds):
        s, e = bounds
        block = gram[:, s:e] * inv[:, None]  # a fresh (n, b) C-contiguous array
        block *= inv[None, s:e]
        return block

    return _knn_graph(n, k, knn_self, inv == 0, blocks, produce, produce_in_workers=True,
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
    x = _as_features(features, np.asarray(features).shape[0], label)
    k = _check_k(k, x.shape[0], "k")
    return _item_knn_from_features(x, k, knn_self, block_size, label, progress)


def user_interest_features(interactions, features: np.ndarray) -> np.ndarray:
    """Users' modal interest: mean feature of each user's training items (Sec. 4.1), ``(n_users, d)``.

    float32; a user without training items gets a zero row (the official code divides 0 by 0).
    The interest graphs do not need this array: cosine ignores the ``1/|I_u|`` scale.
    """
    binary = _binary(interactions)
    x = _as_features(features, binary.shape[1], "features")
    sums = binary @ x
    deg = np.diff(binary.indptr).astype(np.float32)
    np.divide(sums, deg[:, None], out=sums, where=deg[:, None] > 0)
    return sums.astype(np.float32, copy=False)


def choose_user_route(n_users: int, n_items: int, nnz: int, dim: int, gram_shared: bool = False) -> str:
    """``"features"`` or ``"gram"``: the cheaper exact route to a user interest kNN graph.

    Estimated multiply-adds (a sparse one costs :data:`SPARSE_MAC_COST` BLAS ones):
    features = ``n_users^2 d + c nnz d``; gram = ``n_items^2 d`` (0 when the item side needs the
    same Gram anyway, ``gram_shared``) ``+ c nnz (n_items + n_users)``. The gram route also needs
    ``4 n_items^2`` bytes and is refused above :data:`GRAM_MAX_BYTES`.
    """
    if 4 * n_items * n_items > GRAM_MAX_BYTES:
        return "features"
    via_features = float(n_users) ** 2 * dim + SPARSE_MAC_COST * nnz * dim
    via_gram = (0.0 if gram_shared else float(n_items) ** 2 * dim) + \
        SPARSE_MAC_COST * float(nnz) * (n_items + n_users)
    return "gram" if via_gram < via_features else "features"


def _user_knn_from_features(binary: sp.csr_matrix, x: np.ndarray, k: int, knn_self: bool,
                            block_size: Optional[int], label: str, progress: Progress) -> sp.csr_matrix:
    n = binary.shape[0]
    y = binary @ _safe_scale(x)  # (n_users, d) feature sums: same cosines as the means
    inv = _inverse(_row_norms(y))
    y *= inv[:, None]
    blocks = _column_blocks(n, 4 * n, block_size)

    def produce(bounds):
        s, e = bounds
        return y @ y[s:e].T

    return _knn_graph(n, k, knn_self, inv == 0, blocks, produce, produce_in_workers=False,
                      label=label, progress=progress)


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


def _user_knn_from_gram(binary: sp.csr_matrix, gram: np.ndarray, k: int, knn_self: bool,
                        block_size: Optional[int], label: str, progress: Progress) -> sp.csr_matrix:
    n, n_items = binary.shape
    inv = _inverse(np.sqrt(np.maximum(_quadratic_forms(binary, gram), 0.0)))
    scaled = sp.csr_matrix(sp.diags(inv) @ binary, dtype=np.float32)  # rows / ||y_u||
    if block_size is None:
        block_size = int(min(_GRAM_BLOCK_MAX, max(16, BLOCK_BYTES // (4 * (2 * n_items + n)))))
    blocks = [(s, min(n, s + block_size)) for s in range(0, n, block_size)]

    def produce(bounds):
        s, e = bounds
        part = scaled[s:e] @ gram  # (b, n_items) = Y_hat_b X^T
        return scaled @ np.ascontiguousarray(part.T)  # (n_users, b) = Y_hat Y_hat_b^T

    return _knn_graph(n, k, knn_self, inv == 0, blocks, produce, produce_in_workers=True,
                      label=label, progress=progress)


def _gram(x: np.ndarray) -> np.ndarray:
    """Raw item Gram ``X X^T`` ``(n_items, n_items)`` float32 (one BLAS call)."""
    x = _safe_scale(x)
    # np.dot recognises X X^T and uses the symmetric rank-k update (half the work of matmul's gemm)
    return np.dot(x, x.T)


def user_interest_knn(interactions, features: np.ndarray, k: int, *, knn_self: bool = True,
                      route: str = "auto", block_size: Optional[int] = None,
                      progress: Progress = None, label: str = "user_interest") -> sp.csr_matrix:
    """User interest kNN graph of one modality: :func:`cosine_knn` of the users' mean features.

    ``interactions``: ``(n_users, n_items)``; ``features``: ``(n_items, d)``. A user's interest
    is the mean feature of their training items (Sec. 4.1); since cosine ignores scale the sums
    ``R X`` are used. Users without training items (or whose sum is the zero vector) get only a
    self-loop ``1/k``. ``route``: ``"features"``, ``"gram"`` or ``"auto"``
    (:func:`choose_user_route`); all routes give the same graph up to float32 rounding of the
    cosines. Returns CSR float32 ``(n_users, n_users)``.
    """
    binary = _binary(interactions)
    x = _as_features(features, binary.shape[1], label)
    k = _check_k(k, binary.shape[0], "user_knn_k")
    if route == "auto":
        route = choose_user_route(binary.shape[0], binary.shape[1], binary.nnz, x.shape[1])
    if route == "features":
        return _user_knn_from_features(binary, x, k, knn_self, block_size, label, progress)
    if route == "gram":
        return _user_knn_from_gram(binary, _gram(x), k, knn_self, block_size, label, progress)
    raise GraphParamError(f"route={route!r}: must be 'auto', 'features' or 'gram'.")


# --------------------------------------------------------------------------------------------
# Fusion and the whole build


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
    return _canonical(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), n)


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
    binary = _binary(interactions)
    n_users, n_items = binary.shape
    named = [(name, _as_features(arr, n_items, name)) for name, arr in _named_features(features)]
    _check_k(params.user_knn_k, n_users, "user_knn_k")
    _check_k(params.item_knn_k, n_items, "item_knn_k")
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
        return timed(f"{side}_cooccurrence", lambda: cooccurrence_topk(
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
            route = choose_user_route(n_users, n_items, binary.nnz, x.shape[1], gram_shared=want_item)
        if route == "gram":
            t0 = time.perf_counter()
            if progress is not None:
                progress(f"user_interest[{name}]: item Gram {n_items}x{n_items} (gram route)")
            gram = _gram(x)
            user_graphs[m] = _user_knn_from_gram(binary, gram, params.user_knn_k, params.knn_self, None,
                                                 f"user_interest[{name}]", progress)
            seconds["user_interest"] += time.perf_counter() - t0
            if want_item:
                item_graphs[m] = timed("item_semantic", lambda: _item_knn_from_gram(
                    gram, params.item_knn_k, params.knn_self, None, f"item_semantic[{name}]", progress))
            del gram
            continue
        if want_user:
            if progress is not None:
                progress(f"user_interest[{name}]: feature route")
            user_graphs[m] = timed("user_interest", lambda: _user_knn_from_features(
                binary, x, params.user_knn_k, params.knn_self, None, f"user_interest[{name}]", progress))
        if want_item:
            item_graphs[m] = timed("item_semantic", lambda: _item_knn_from_features(
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
