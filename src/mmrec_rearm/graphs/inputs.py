"""Input checks and small array helpers shared by the graph builders (arrays in, arrays out).

Only numpy, scipy and :mod:`mmrec_rearm.errors` are imported here (no torch, no MMRec).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from ..errors import DatasetError, GraphParamError
from .params import is_int

__all__ = ["empty_graph", "canonical_csr", "binary_matrix", "as_features", "safe_scale", "row_norms",
           "inverse_norms", "check_k"]


def empty_graph(n: int) -> sp.csr_matrix:
    """An ``(n, n)`` CSR float32 matrix without entries (a skipped graph)."""
    return sp.csr_matrix((n, n), dtype=np.float32)


def canonical_csr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n: int) -> sp.csr_matrix:
    """CSR float32 ``(n, n)`` from COO triplets; repeated (row, col) pairs are summed (in float64)."""
    m = sp.csr_matrix((np.asarray(values, dtype=np.float64), (rows, cols)), shape=(n, n))
    m.sum_duplicates()
    m.sort_indices()
    return m.astype(np.float32)


def binary_matrix(interactions, where: str = "interactions") -> sp.csr_matrix:
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


def as_features(features: np.ndarray, n_rows: int, name: str) -> np.ndarray:
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


def safe_scale(arr: np.ndarray) -> np.ndarray:
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


def row_norms(arr: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Euclidean row norms in float64 (no underflow of squares of float32 values)."""
    out = np.empty(arr.shape[0], dtype=np.float64)
    for s in range(0, arr.shape[0], chunk):
        part = arr[s:s + chunk].astype(np.float64)
        out[s:s + chunk] = np.sqrt(np.einsum("ij,ij->i", part, part))
    return out


def inverse_norms(norms: np.ndarray) -> np.ndarray:
    """float32 ``1 / norm`` with 0 for zero norms (those nodes get a self-loop only)."""
    inv = np.zeros(norms.shape, dtype=np.float64)
    np.divide(1.0, norms, out=inv, where=norms > 0)
    return inv.astype(np.float32)


def check_k(k, n: int, name: str) -> int:
    if not is_int(k) or k < 1:
        raise GraphParamError(f"{name}={k!r}: must be an integer >= 1.")
    if k >= n:
        raise GraphParamError(
            f"{name}={k} but there are only {n} nodes on that side; k must be smaller than the "
            f"number of nodes (choose {name} <= {n - 1}).")
    return int(k)

