"""On-disk cache of the homogeneous graphs (and of other derived sparse matrices), keyed by a
fingerprint of everything they depend on; this package's front door is get-or-build.

Building the four homogeneous graphs (co-occurrence top-k and cosine kNN, paper Sec. 4.2,
eq. 1-2) costs seconds to minutes on Baby / Sports / Clothing, while the graphs are a pure
function of (training interactions, item features, graph parameters, builder version). They are
stored in an lmdb environment and served again only when every input is byte-identical.

* :mod:`.keys` — the fingerprints (:func:`fingerprint`, :func:`content_key`);
* :mod:`.entry` — the stored form of one entry (raw arrays + checksummed JSON manifest);
* :mod:`.store` — :class:`GraphCache`, the lmdb store of one directory, its locks and repair;
* :mod:`.location` — where the cache lives, listing and clearing it;
* here — :func:`load_or_build` (REARM's graphs) and :func:`load_or_build_matrices` (any named
  sparse matrices under a key): look up, else build under a per-key lock and store.

This package never imports torch or MMRec. See docs/cache.md.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Callable, Dict, Optional, Tuple, Union

import scipy.sparse as sp

from .. import graphs as _graphs
from ..data import TrainingData
from ..errors import CacheError
from ..graphs import GraphParams, HomogeneousGraphs
from .keys import FORMAT_VERSION, content_key, data_fingerprint, fingerprint, params_json
from .location import DEFAULT_DIRNAME, cache_dir_for, clear, entries, find_cache_dir, resolve_cache_dir, user_cache_dir
from .store import DEFAULT_MAP_SIZE, ENV_DIRNAME, ENV_VAR, GraphCache

__all__ = [
    "FORMAT_VERSION",
    "ENV_VAR",
    "DEFAULT_DIRNAME",
    "ENV_DIRNAME",
    "DEFAULT_MAP_SIZE",
    "GraphCache",
    "fingerprint",
    "data_fingerprint",
    "content_key",
    "load_or_build",
    "load_or_build_matrices",
    "resolve_cache_dir",
    "cache_dir_for",
    "user_cache_dir",
    "find_cache_dir",
    "entries",
    "clear",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
Progress = Optional[Callable[[str], None]]


# --------------------------------------------------------------------------------------------
# The hook used by the model and the CLI


def _build(data: TrainingData, params: GraphParams, progress: Progress) -> HomogeneousGraphs:
    # Looked up at call time so tests can wrap the builder.
    return _graphs.build_graphs(data.interactions, data.features, params, progress=progress)


def _meta(data: TrainingData, params: GraphParams) -> dict:
    return {
        "params": json.loads(params_json(params)),
        "n_users": int(data.n_users),
        "n_items": int(data.n_items),
        "n_train": int(data.interactions.nnz),
        "modalities": [[name, int(arr.shape[1])] for name, arr in data.features.items()],
        "dataset": (data.source or {}).get("inter", ""),
    }


def load_or_build(
    data: TrainingData,
    params: GraphParams,
    cache_dir: Union[PathLike, None, bool] = None,
    progress: Progress = None,
) -> Tuple[HomogeneousGraphs, bool]:
    """The homogeneous graphs of ``data`` under ``params``, from the cache or freshly built.

    Returns ``(graphs, hit)``. ``cache_dir``: a directory, None for the default (see
    :func:`resolve_cache_dir`), or False to bypass the cache. Locking and failure handling: see
    :func:`load_or_build_matrices`.
    """
    say = progress or (lambda _msg: None)
    if cache_dir is True:
        cache_dir = None
    if cache_dir is False:
        return _build(data, params, progress), False

    t0 = time.perf_counter()
    key = fingerprint(data, params)
    feature_mb = sum(a.nbytes for a in data.features.values()) / 1e6
    say(f"fingerprint {key[:12]} ({feature_mb:.1f} MB of features) in {time.perf_counter() - t0:.2f} s")

    def build():
        graphs = _build(data, params, progress)
        return {name: getattr(graphs, name) for name in HomogeneousGraphs.GRAPH_NAMES}, graphs.seconds

    mats, seconds, hit = load_or_build_matrices(
        key, build, resolve_cache_dir(data, cache_dir), meta=lambda: _meta(data, params),
        names=HomogeneousGraphs.GRAPH_NAMES, progress=progress)
    return HomogeneousGraphs(**mats, seconds=seconds), hit


def load_or_build_matrices(
    key: str,
    build: Callable[[], Tuple[Dict[str, sp.spmatrix], Dict[str, float]]],
    directory: PathLike,
    *,
    meta: Optional[Callable[[], dict]] = None,
    names: Optional[Tuple[str, ...]] = None,
    progress: Progress = None,
) -> Tuple[Dict[str, sp.spmatrix], Dict[str, float], bool]:
    """Named sparse matrices under ``key`` (e.g. :func:`content_key`) from the cache in
    ``directory``, or ``build()`` -> (matrices, seconds) and store them. Returns ``(matrices,
    seconds, hit)``; ``names``: what a stored entry must hold; ``meta()``: JSON-able manifest extras.

    Two processes asking for the same key at once build it once: the builder holds
    ``<key>.lock`` from look-up to store, the other waits and then reads the stored entry. A cache
    that cannot be used (unwritable, full, damaged beyond repair) never stops the build: a warning
    names the path and the matrices are built uncached.
    """
    say = progress or (lambda _msg: None)

    def built():
        mats, seconds = build()
        return mats, seconds, False

    try:
        cache = GraphCache(directory)
        found = cache.get_matrices(key, names)  # fast path: a hit needs no lock
    except CacheError as exc:
        logger.warning("graph cache unusable, building without it: %s", exc)
        return built()
    if found is not None:
        say(f"cache hit in {cache.path}")
        return found[0], found[1], True

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(cache.lock(
                key, on_wait=lambda m: say(m + " (another process or thread is building these graphs)")))
            found = cache.get_matrices(key, names)  # the process we waited for may have stored it
        except (CacheError, OSError) as exc:
            logger.warning("graph cache %s unusable, building without it: %s", directory, exc)
            return built()
        if found is not None:
            say(f"cache hit in {cache.path} (built by another process)")
            return found[0], found[1], True
        say(f"cache miss in {cache.path}; building graphs")
        mats, seconds, _ = built()
        try:
            stored = cache.put_matrices(key, mats, seconds, meta() if meta is not None else None)
            say(f"stored {stored / 1e6:.1f} MB in {cache.path}")
        except CacheError as exc:
            logger.warning("graphs built but not cached: %s", exc)
        return mats, seconds, False
