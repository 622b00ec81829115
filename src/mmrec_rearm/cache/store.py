"""The lmdb store of one cache directory (:class:`GraphCache`) and its locking.

Layout of a cache directory (default: ``<dataset folder>/.rearm_cache``)::

    graphs.lmdb/           lmdb environment (data.mdb, lock.mdb)
    graphs.lmdb.lock       flock: shared while a process has the environment open,
                           exclusive while it is cleared or replaced after damage
    <key>.lock             flock: exclusive around "look up -> build -> store" of one key

The manifest of an entry is written last in the same write transaction, so readers see a complete
entry or none. A damaged entry is logged, deleted and missed; a damaged lmdb file (lmdb reports it
invalid or corrupted, or ``data.mdb`` is shorter than its own header says, which would otherwise
crash the process with SIGBUS on access) is deleted and recreated.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import lmdb
import scipy.sparse as sp

from ..errors import CacheCorruptError, CacheError
from ..graphs import HomogeneousGraphs
from ..hints import command
from .entry import MANIFEST, check_key, decode, delete_prefix, encode, parse_manifest

try:  # POSIX only; without it the per-key lock is skipped (see docs/cache.md)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["GraphCache", "ENV_VAR", "ENV_DIRNAME", "DEFAULT_MAP_SIZE"]

logger = logging.getLogger(__name__)

#: Environment variable naming the cache directory (overrides the dataset-folder default).
ENV_VAR = "MMREC_REARM_CACHE_DIR"
#: Name of the lmdb environment directory inside a cache directory.
ENV_DIRNAME = "graphs.lmdb"
#: Virtual address space reserved for the environment. With ``writemap`` off the file only grows
#: as data is written; 64 GiB holds about a thousand Clothing-sized entries (~65 MB each).
DEFAULT_MAP_SIZE = 1 << 36

PathLike = Union[str, "os.PathLike[str]"]
Progress = Optional[Callable[[str], None]]

# lmdb errors that mean the files themselves are damaged (delete + recreate is the fix). Others,
# such as a permission error or a full disk, are reported without touching the files.
_DAMAGE_ERRORS = tuple(
    getattr(lmdb, name)
    for name in ("InvalidError", "CorruptedError", "PageNotFoundError", "VersionMismatchError",
                 "PanicError", "BadChecksumError", "IncompatibleError")
    if hasattr(lmdb, name)
)


# --------------------------------------------------------------------------------------------
# Locks and the per-process registry of open environments


@contextlib.contextmanager
def _flock(path: Path, shared: bool = False, on_wait: Progress = None) -> Iterator[None]:
    """Hold an flock on ``path`` (created if missing); ``on_wait`` is called if it must block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait(f"waiting for lock {path}")
                fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class _EnvDamaged(Exception):
    """Internal: the lmdb files are damaged; carries the reason."""


# lmdb forbids opening one environment twice in a process (closing either copy drops the other's
# locks), so threads share one handle per path, reference-counted. A handle inherited through
# fork() must never be used or closed in the child: it is parked in _INHERITED instead.
_REGISTRY_LOCK = threading.Lock()
_REGISTRY: Dict[str, list] = {}  # realpath -> [env, users, pid]
_INHERITED: list = []


def _open_env(path: Path, map_size: int) -> "lmdb.Environment":
    key = os.path.realpath(path)
    with _REGISTRY_LOCK:
        entry = _REGISTRY.get(key)
        if entry is not None and entry[2] != os.getpid():
            _INHERITED.append(entry[0])
            entry = None
        if entry is None:
            env = lmdb.open(
                str(path), map_size=map_size, subdir=True, max_dbs=1, lock=True,
                writemap=False, meminit=False,
            )
            try:
                _check_file_size(env, path)
                env.reader_check()  # free reader slots left by killed processes
            except BaseException:
                env.close()
                raise
            entry = [env, 0, os.getpid()]
            _REGISTRY[key] = entry
        entry[1] += 1
        return entry[0]


def _release_env(path: Path) -> None:
    key = os.path.realpath(path)
    with _REGISTRY_LOCK:
        entry = _REGISTRY.get(key)
        if entry is None or entry[2] != os.getpid():
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _REGISTRY[key]
            entry[0].close()


def _check_file_size(env: "lmdb.Environment", path: Path) -> None:
    # lmdb trusts its header: a data.mdb cut short (disk full, bad copy) opens fine, and touching a
    # page past the end of the file kills the process with SIGBUS. Compare before any data access.
    # The header is read before the size; committed pages are written before the header, so a
    # concurrent writer can only make the file larger than required.
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    have = os.path.getsize(path / "data.mdb")
    if have < needed:
        raise _EnvDamaged(f"data.mdb has {have} bytes but its header requires {needed} (truncated)")


# --------------------------------------------------------------------------------------------
# The store


class GraphCache:
    """The lmdb store of one cache directory. Safe across threads and processes.

    Every public method opens the environment for its own duration only (under a shared flock on
    ``graphs.lmdb.lock``), so a process holds no lmdb handle between calls and :meth:`clear` or
    the repair of a damaged file can take the environment over exclusively.
    """

    def __init__(self, directory: PathLike, map_size: int = DEFAULT_MAP_SIZE):
        self.directory = Path(directory).expanduser()
        self.path = self.directory / ENV_DIRNAME
        self.map_size = int(map_size)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"{self.directory}: cannot create the graph cache directory ({exc}); pass a "
                f"writable cache_dir / --cache-dir, set {ENV_VAR}, or disable the cache.") from exc
        self._env_lock = self.directory / (ENV_DIRNAME + ".lock")

    def __repr__(self) -> str:
        return f"GraphCache({str(self.directory)!r})"

    # -- plumbing ---------------------------------------------------------------------------

    def _with_env(self, op: Callable[["lmdb.Environment"], object]):
        """Run ``op(env)``; if the lmdb files turn out damaged, recreate them once and retry."""
        for attempt in (0, 1):
            try:
                return self._run_once(op)
            except _EnvDamaged as exc:
                damage = str(exc)
            if attempt:
                raise CacheError(
                    f"{self.path}: graph cache still damaged after recreating it ({damage}); "
                    "delete the directory by hand.")
            self._repair(damage)
        raise AssertionError("unreachable")

    def _run_once(self, op):
        try:
            with _flock(self._env_lock, shared=True):
                env = self._acquire()
                try:
                    return op(env)
                except _DAMAGE_ERRORS as exc:
                    raise _EnvDamaged(f"{type(exc).__name__}: {exc}") from None
                finally:
                    _release_env(self.path)
        except lmdb.MapFullError:
            raise CacheError(
                f"{self.path}: graph cache is full ({self.map_size} bytes reserved); clear it with "
                f"`{command('cache', 'clear', self.directory)}`.") from None
        except lmdb.Error as exc:
            raise CacheError(
                f"{self.path}: graph cache unusable ({type(exc).__name__}: {exc}); check "
                f"permissions and free space, or pass another cache directory / set {ENV_VAR}."
            ) from None
        except OSError as exc:
            raise CacheError(f"{self.directory}: graph cache unusable ({exc}).") from None

    def _acquire(self) -> "lmdb.Environment":
        try:
            return _open_env(self.path, self.map_size)
        except _DAMAGE_ERRORS as exc:
            raise _EnvDamaged(f"{type(exc).__name__}: {exc}") from None

    def _repair(self, reason: str) -> None:
        try:
            with _flock(self._env_lock, shared=False):
                # Another process may have repaired it while this one waited for the lock.
                try:
                    self._acquire()
                    _release_env(self.path)
                    return
                except _EnvDamaged:
                    pass
                logger.warning(
                    "graph cache %s is damaged (%s); deleting it and starting an empty one "
                    "(entries are rebuilt on demand)", self.path, reason)
                self._remove_env()
        except (lmdb.Error, OSError) as exc:
            raise CacheError(f"{self.path}: cannot repair the damaged graph cache ({exc}); "
                             "delete the directory by hand.") from None

    def _remove_env(self) -> None:
        if not self.path.exists():
            return
        # Rename first: the path is free at once even if deleting the files fails half-way.
        aside = self.directory / f"{ENV_DIRNAME}.removed-{os.getpid()}-{time.time_ns()}"
        os.replace(self.path, aside)
        shutil.rmtree(aside, ignore_errors=True)

    # -- public API -------------------------------------------------------------------------

    def lock(self, key: str, on_wait: Progress = None):
        """Context manager: exclusive flock ``<directory>/<key>.lock`` (one builder per key)."""
        check_key(key)
        return _flock(self.directory / f"{key}.lock", shared=False, on_wait=on_wait)

    def get(self, key: str) -> Optional[HomogeneousGraphs]:
        """The stored graphs, or None on a miss. A damaged entry is logged, deleted and missed."""
        found = self.get_matrices(key, names=HomogeneousGraphs.GRAPH_NAMES)
        if found is None:
            return None
        mats, seconds = found
        return HomogeneousGraphs(**mats, seconds=seconds)

    def get_matrices(self, key: str, names: Optional[Tuple[str, ...]] = None
                     ) -> Optional[Tuple[Dict[str, sp.csr_matrix], Dict[str, float]]]:
        """Any entry as (matrices by name, build seconds by name), or None on a miss. ``names``:
        the names the entry must hold (None: whatever it holds). A damaged entry is logged,
        deleted and missed."""
        check_key(key)

        def read(env):
            with env.begin(buffers=True) as txn:
                raw = txn.get(f"{key}/{MANIFEST}".encode("ascii"))
                if raw is None:
                    return None
                try:
                    return decode(txn, key, bytes(raw), names)
                except CacheCorruptError as exc:
                    return exc

        found = self._with_env(read)
        if isinstance(found, CacheCorruptError):
            logger.warning("graph cache %s: entry %s is corrupt (%s); deleting it and rebuilding",
                           self.path, key, found)
            self.delete(key)
            return None
        return found

    def put(self, key: str, graphs: HomogeneousGraphs, meta: Optional[dict] = None) -> int:
        """Store ``graphs`` under ``key`` atomically (replacing any old entry); returns bytes stored.

        ``meta`` (JSON-able) is kept in the manifest, e.g. parameters and dataset counts.
        """
        return self.put_matrices(key, {name: getattr(graphs, name) for name in HomogeneousGraphs.GRAPH_NAMES},
                                 graphs.seconds, meta)

    def put_matrices(self, key: str, matrices: Dict[str, sp.spmatrix],
                     seconds: Optional[Dict[str, float]] = None, meta: Optional[dict] = None) -> int:
        """Store named sparse matrices (names: letters, digits, ``_``, ``-``, ``.``) under ``key``
        atomically, replacing any old entry; returns the bytes stored."""
        check_key(key)
        base = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "created_unix": time.time()}
        base.update(meta or {})
        arrays, manifest = encode(key, dict(matrices), dict(seconds or {}), base)

        def write(env):
            with env.begin(write=True) as txn:
                delete_prefix(txn, key)
                for k, arr in arrays:
                    txn.put(k, memoryview(arr).cast("B") if arr.nbytes else b"")
                txn.put(f"{key}/{MANIFEST}".encode("ascii"), manifest)  # last: commits the entry

        self._with_env(write)
        return sum(arr.nbytes for _, arr in arrays) + len(manifest)

    def delete(self, key: str) -> bool:
        """Remove one entry; True if something was removed."""
        check_key(key)

        def remove(env):
            with env.begin(write=True) as txn:
                return delete_prefix(txn, key) > 0

        return bool(self._with_env(remove))

    def entries(self) -> List[dict]:
        """One dict per stored entry: key, created, sizes, params, dataset counts, ``ok`` flag.

        Only manifests are checked here (arrays are verified when an entry is read).
        """
        if not (self.path / "data.mdb").exists():
            return []

        def scan(env):
            found = []
            sizes: Dict[str, int] = {}
            with env.begin(buffers=True) as txn:
                for k, v in txn.cursor():
                    name = bytes(k).decode("ascii", "replace")
                    key = name.split("/", 1)[0]
                    sizes[key] = sizes.get(key, 0) + len(v)
                    if name.endswith("/" + MANIFEST):
                        found.append((key, bytes(v)))
            out = []
            for key, raw in found:
                item = {"key": key, "bytes": sizes.get(key, 0), "ok": True}
                try:
                    body = parse_manifest(raw, key)
                    item.update({f: body.get(f) for f in ("created", "n_users", "n_items", "modalities",
                                                          "params", "dataset")})
                except CacheCorruptError as exc:
                    item.update(ok=False, problem=str(exc))
                out.append(item)
            return out

        return self._with_env(scan)

    def clear(self) -> int:
        """Delete every entry (the whole environment) and idle lock files; returns entries removed."""
        count = len(self.entries())
        with _flock(self._env_lock, shared=False):
            self._remove_env()
        if fcntl is not None:
            for lock_file in self.directory.glob("*.lock"):
                if lock_file.name == self._env_lock.name:
                    continue
                # Only unlink a key lock nobody holds; one held by a running builder stays.
                with contextlib.suppress(OSError):
                    fd = os.open(lock_file, os.O_RDWR)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        lock_file.unlink()
                    finally:
                        os.close(fd)
        return count


