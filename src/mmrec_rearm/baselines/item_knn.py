"""Normalised item kNN graphs of modal features (the fixed "original" item-item graphs of MICRO /
LATTICE), as pure functions, and their on-disk cache.

For each modality ``m`` with features ``X_m`` (n_items, d_m): ``S_m`` keeps, in every row, the
``k`` largest cosine similarities (the item itself is one of them, with similarity 1) and their
values; the graph is then ``D^-1/2 S_m D^-1/2`` (``sym``), ``D^-1 S_m`` (``rw``) or ``S_m``
(``none``) with ``D`` the row sums of ``S_m`` (MICRO paper eq. 2-4; authors' ``build_knn_normalized
_graph``). The neighbour search is :func:`mmrec_rearm.graphs.cosine_knn` (blocked, exact, never an
n x n matrix); here only its ``cos / k`` values are turned back into cosines and normalised.

The graphs depend only on the features, ``k`` and the normalisation, so :func:`load_or_build_item_knn`
keys them by content (:func:`mmrec_rearm.cache.content_key`) and keeps them in the graph cache.
Only numpy, scipy and the graph / cache modules are imported here (no torch, no MMRec).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import scipy.sparse as sp

from ..errors import GraphParamError
from ..graphs import cosine_knn

__all__ = ["NORMALISATIONS", "normalise_knn", "knn_graph", "load_or_build_item_knn"]

NORMALISATIONS = ("sym", "rw", "none")
Progress = Optional[Callable[[str], None]]


def normalise_knn(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n: int, norm: str) -> np.ndarray:
    """Edge weights of ``D^-1/2 S D^-1/2`` / ``D^-1 S`` / ``S`` for the edges ``(rows, cols)`` with
    values ``values`` of an ``(n, n)`` graph; ``D`` = row sums of ``S``, an inverse of 0 stays 0
    (float64)."""
    if norm not in NORMALISATIONS:
        raise GraphParamError(f"knn normalisation {norm!r}: must be one of {', '.join(NORMALISATIONS)}.")
    values = np.asarray(values, dtype=np.float64)
    if norm == "none":
        return values
    degree = np.bincount(rows, weights=values, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = degree ** (-0.5 if norm == "sym" else -1.0)
    scale[~np.isfinite(scale)] = 0.0
    if norm == "sym":
        return scale[rows] * values * scale[cols]
    return scale[rows] * values


def knn_graph(features: np.ndarray, k: int, norm: str = "sym") -> sp.csr_matrix:
    """The normalised cosine kNN graph of the rows of ``features`` (n, d) -> CSR float32 (n, n).

    An all-zero feature row has no direction: it keeps only its self-loop (the authors' code
    divides by its zero norm and gets NaN)."""
    scaled = cosine_knn(features, k, knn_self=True, label="item_knn").tocoo()
    cosines = scaled.data.astype(np.float64) * k  # cosine_knn stores cos / k
    weights = normalise_knn(scaled.row, scaled.col, cosines, scaled.shape[0], norm)
    graph = sp.csr_matrix((weights, (scaled.row, scaled.col)), shape=scaled.shape)
    graph.sort_indices()
    return graph.astype(np.float32)


def load_or_build_item_knn(features: Mapping[str, np.ndarray], k: int, norm: str,
                           cache_dir: Union[str, "os.PathLike[str]", bool], dataset: str = "",
                           progress: Progress = None) -> Tuple[Dict[str, sp.csr_matrix], bool]:
    """:func:`knn_graph` of every modality (name -> (n_items, d_m)), from the graph cache or built
    and stored -> ({name: graph}, hit). ``cache_dir``: the cache folder (the caller chooses it, e.g.
    with :func:`mmrec_rearm.cache.cache_dir_for`) or False (no cache); ``dataset``: recorded in
    the entry's manifest."""
    def build():
        graphs, seconds = {}, {}
        for name, values in features.items():
            t0 = time.perf_counter()
            graphs[name] = knn_graph(values, k, norm)
            seconds[name] = time.perf_counter() - t0
        return graphs, seconds

    if cache_dir is False:
        return build()[0], False
    from .. import cache

    arrays = {name: np.ascontiguousarray(values, dtype=np.float32) for name, values in features.items()}
    key = cache.content_key("item_knn", arrays, {"k": int(k), "norm": norm}, builders=(sys.modules[__name__],))
    meta = lambda: {"kind": "item_knn", "params": {"k": int(k), "norm": norm},  # noqa: E731
                    "modalities": [[n, int(a.shape[1])] for n, a in arrays.items()],
                    "n_items": int(next(iter(arrays.values())).shape[0]), "dataset": dataset}
    graphs, _, hit = cache.load_or_build_matrices(
        key, build, cache_dir, meta=meta,
        names=tuple(features), progress=progress)
    return {name: graphs[name] for name in features}, hit
