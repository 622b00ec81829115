"""Where a graph cache lives, and the cache-directory operations of the CLI (list, clear).

The first that applies: an explicit directory; ``$MMREC_REARM_CACHE_DIR``; ``<dataset folder>/
.rearm_cache`` beside the ``.inter`` file, if writable; the per-user cache directory.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Union

from ..data import TrainingData
from ..errors import CacheError
from .store import ENV_DIRNAME, ENV_VAR, GraphCache

__all__ = ["DEFAULT_DIRNAME", "user_cache_dir", "resolve_cache_dir", "cache_dir_for", "find_cache_dir",
           "entries", "clear"]

logger = logging.getLogger(__name__)

#: Name of the default cache directory inside a dataset folder.
DEFAULT_DIRNAME = ".rearm_cache"

PathLike = Union[str, "os.PathLike[str]"]


def user_cache_dir() -> Path:
    """Per-user fallback: ``$XDG_CACHE_HOME/mmrec-rearm`` or ``~/.cache/mmrec-rearm``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mmrec-rearm"


def resolve_cache_dir(data: TrainingData, cache_dir: Optional[PathLike] = None) -> Path:
    """The cache directory for ``data``: :func:`cache_dir_for` its ``.inter`` file."""
    return cache_dir_for((data.source or {}).get("inter"), cache_dir)


def cache_dir_for(inter_file: Optional[PathLike], cache_dir: Optional[PathLike] = None) -> Path:
    """The cache directory for a dataset whose interactions are read from ``inter_file``.

    Order: ``cache_dir`` if given; else ``$MMREC_REARM_CACHE_DIR``; else ``<dataset folder>/
    .rearm_cache`` (folder of ``inter_file``) if that folder is writable; else
    :func:`user_cache_dir`. Keys are content hashes, so one directory can serve many datasets.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    configured = os.environ.get(ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    if inter_file:
        # abspath, not resolve(): a staged dataset folder links each file to a shared source,
        # and resolving the .inter link would put the cache back into that source folder
        folder = Path(os.path.abspath(os.path.expanduser(str(inter_file)))).parent
        target = folder / DEFAULT_DIRNAME
        if os.access(target if target.is_dir() else folder, os.W_OK | os.X_OK):
            return target
        logger.info("dataset folder %s is not writable; caching graphs in %s", folder, user_cache_dir())
    return user_cache_dir()


def find_cache_dir(path: PathLike) -> Path:
    """``path`` itself if it holds a cache, else ``path/.rearm_cache`` if that does (a dataset folder).

    A cleared cache (only its ``graphs.lmdb.lock`` left) still counts as a cache.
    """
    path = Path(path).expanduser()
    for candidate in (path, path / DEFAULT_DIRNAME):
        if (candidate / ENV_DIRNAME).is_dir() or (candidate / (ENV_DIRNAME + ".lock")).is_file():
            return candidate
    raise CacheError(
        f"{path}: no graph cache here (looked for {path / ENV_DIRNAME} and "
        f"{path / DEFAULT_DIRNAME / ENV_DIRNAME}); pass a cache directory or a dataset folder.")


def entries(cache_dir: PathLike) -> List[dict]:
    """Entries of the cache in ``cache_dir`` (a cache directory or a dataset folder)."""
    return GraphCache(find_cache_dir(cache_dir)).entries()


def clear(cache_dir: PathLike, key: Optional[str] = None) -> int:
    """Delete all entries (or the one ``key``) of the cache in ``cache_dir``; returns how many."""
    cache = GraphCache(find_cache_dir(cache_dir))
    if key is not None:
        return int(cache.delete(key))
    return cache.clear()

