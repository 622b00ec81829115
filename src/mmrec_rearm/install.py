"""Install REARM and the five Table-2 baselines MMRec lacks into an MMRec checkout and remove them
again, under the install ledger's guarantees.

MMRec finds a model by file name: ``-m REARM`` imports ``src/models/rearm.py`` and takes its
attribute ``REARM``; its configuration is read from ``src/configs/model/REARM.yaml`` (after
``overall.yaml`` and ``src/configs/dataset/<dataset>.yaml``). So installing means writing:

* for each model of :data:`MODEL_SHIMS`, ``src/models/<name lower>.py``: a shim that re-exports our
  class; it needs ``mmrec-rearm`` to be pip-installed in the environment that runs MMRec;
* each ``configs/model/*.yaml`` / ``configs/dataset/*.yaml`` shipped with this package, into
  ``src/configs/model/`` / ``src/configs/dataset/``.

Every file (and folder) put into the checkout goes through :func:`place_files`, which records it
with its content hash in the ledger (:mod:`.ledger`). Ownership is decided by the ledger alone:

* ``install`` never overwrites a file that is not listed or that changed since it was written; it
  refuses before writing anything, naming each such file (``force=True`` moves each to
  ``FILE.bak`` first);
* ``uninstall`` removes a file only when it is listed and unchanged; an edited file stays, with one
  line saying so (``force=True`` moves it to ``FILE.bak``); a folder we created (the demo dataset)
  is removed only when every file in it is ours and unchanged, or a cache computed from them (the
  graph cache ``.rearm_cache/``, MMRec's ``*_adj_*.pt``, ``user_graph_dict.npy``). Copies a user made
  are never listed, so never touched.

Adding an installable file later (another model's shim and YAML) means adding an entry to
:data:`MODEL_SHIMS` and a YAML file to ``configs/model/``; the ledger covers it automatically.
:mod:`.quickstart` adds the demo dataset through the same :func:`place_files`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .atomic import write_bytes
from .errors import InstallError
from .hints import command
from .ledger import LEDGER_NAME, Ledger, backup_name

__all__ = [
    "MARKER", "MODEL_SHIMS", "SHIM_RELPATH", "REQUIRED", "LEDGER_NAME", "find_checkout",
    "package_configs_dir", "planned_files", "place_files", "check_placeable", "install", "uninstall", "data_root",
]

PathLike = Union[str, "os.PathLike[str]"]
Report = Optional[Callable[[str], None]]

#: First line of every text file we write: for people reading the file; ownership is the ledger's.
MARKER = "# written by mmrec-rearm install; uninstall removes it only while it is unchanged"
#: MMRec model name -> module of this package that defines the class of that name: REARM, then the
#: Table-2 baselines MMRec lacks (MIGGT is the paper's "MIG-GT": a class name cannot hold the hyphen).
MODEL_SHIMS: Dict[str, str] = {
    "REARM": "mmrec_rearm.model.rearm",
    "MICRO": "mmrec_rearm.baselines.micro",
    "DiffMM": "mmrec_rearm.baselines.diffmm",
    "ApeGNN": "mmrec_rearm.baselines.apegnn",
    "MGDN": "mmrec_rearm.baselines.mgdn",
    "MIGGT": "mmrec_rearm.baselines.miggt",
}
SHIM_RELPATH = Path("src", "models", "rearm.py")
#: What makes a folder an MMRec checkout (relative to its root).
REQUIRED = ("src/main.py", "src/models/", "src/configs/model/", "src/common/abstract_recommender.py")
#: Package config sub-folder -> destination inside the checkout.
CONFIG_DESTINATIONS = {"model": Path("src", "configs", "model"),
                       "dataset": Path("src", "configs", "dataset")}


# --------------------------------------------------------------------------------------------
# Locating things


def find_checkout(mmrec_dir: PathLike) -> Path:
    """Root of the MMRec checkout at ``mmrec_dir`` (the checkout itself or its ``src/`` folder).

    Raises InstallError naming every missing part of :data:`REQUIRED` when it is not one.
    """
    given = Path(mmrec_dir).expanduser().resolve()
    if not given.is_dir():
        raise InstallError(f"{given}: no such folder; pass the root of an MMRec checkout "
                           "(git clone https://github.com/enoche/MMRec)")
    root = given
    if given.name == "src" and (given / "main.py").is_file() and not (given / "src").exists():
        root = given.parent  # MMREC_SRC conventionally points at the checkout's src/
    missing = [part for part in REQUIRED if not _present(root, part)]
    if missing:
        raise InstallError(f"{root} is not an MMRec checkout: missing {', '.join(missing)}; pass the "
                           "root folder of a clone of https://github.com/enoche/MMRec")
    return root


def _present(root: Path, part: str) -> bool:
    """``part`` ending in ``/`` must be a folder, otherwise a file."""
    return (root / part).is_dir() if part.endswith("/") else (root / part).is_file()


def package_configs_dir() -> Path:
    """Folder holding this package's ``model/`` and ``dataset/`` YAML files.

    ``configs/`` sits at the repository root and ships in wheels as ``mmrec_rearm.configs``, so look
    for the installed package first, then next to this module, then at the source tree's root.
    """
    candidates: List[Path] = []
    try:
        from importlib import resources

        candidates.append(Path(str(resources.files("mmrec_rearm.configs"))))
    except (ImportError, ModuleNotFoundError, TypeError):
        pass  # editable installs map only the code packages
    here = Path(__file__).resolve().parent
    candidates += [here / "configs", here.parents[1] / "configs"]
    for folder in candidates:
        if (folder / "model").is_dir():
            return folder
    raise InstallError("cannot find the mmrec-rearm configs (looked in "
                       f"{', '.join(str(c) for c in candidates)}); reinstall mmrec-rearm")


def data_root(root: Path) -> Path:
    """MMRec's data folder: ``data_path`` of ``src/configs/overall.yaml`` (default ``../data/``),
    resolved against ``src/``, where MMRec runs."""
    data_path = "../data/"
    overall = root / "src" / "configs" / "overall.yaml"
    if overall.is_file():
        try:
            import yaml

            loaded = yaml.safe_load(overall.read_text(encoding="utf-8")) or {}
            if isinstance(loaded, dict) and isinstance(loaded.get("data_path"), str):
                data_path = loaded["data_path"]
        except Exception:  # a broken overall.yaml is MMRec's problem to report, not ours
            pass
    return (root / "src" / data_path).resolve()


def marked(text: str) -> str:
    """``text`` with :data:`MARKER` as its first line."""
    return MARKER + "\n" + text


def planned_files(root: Path) -> Dict[Path, str]:
    """Every file :func:`install` writes under checkout ``root`` -> its full content."""
    files = {root / "src" / "models" / f"{name.lower()}.py": marked(f"from {module} import {name}  # noqa: F401\n")
             for name, module in MODEL_SHIMS.items()}
    configs = package_configs_dir()
    for sub, destination in CONFIG_DESTINATIONS.items():
        folder = configs / sub
        if not folder.is_dir():
            continue
        for source in sorted(folder.glob("*.yaml")):
            files[root / destination / source.name] = marked(source.read_text(encoding="utf-8"))
    return files


def _say(report: Report, line: str) -> None:
    if report is not None:
        report(line)


# --------------------------------------------------------------------------------------------
# Writing under the ledger


_WHY = {"changed": "changed since mmrec-rearm wrote it", "foreign": "not written by mmrec-rearm"}


def place_files(root: PathLike, files: Mapping[Path, Union[str, bytes]], *, folders: Sequence[Path] = (),
                force: bool = False, update: bool = True, report: Report = print) -> List[Path]:
    """Write ``files`` (path -> content) and create ``folders`` in checkout ``root``, recording each
    in the ledger. -> the file paths, in order.

    A path that does not exist is written; one with exactly this content is kept (and recorded);
    one of ours, unchanged since written, is replaced (``update=False``: refused instead). Any
    other existing path (not ours, or changed since we wrote it; a folder we did not create) is a
    conflict: without ``force`` an InstallError names every conflict before anything is written;
    with ``force`` each is moved to ``<name>.bak`` first. Each file is written atomically.
    """
    ledger = Ledger.load(root)
    contents = {Path(p): (c.encode("utf-8") if isinstance(c, str) else bytes(c)) for p, c in files.items()}
    conflicts, actions = _plan(ledger, contents, folders, update)
    if conflicts and not force:
        raise _refusal(conflicts)
    written: List[Path] = []
    try:
        for path, why in conflicts:
            _move_aside(ledger, path, why, report)
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            ledger.record_folder(folder)
        for path, action in actions:
            if action != "unchanged":
                path.parent.mkdir(parents=True, exist_ok=True)
                write_bytes(path, contents[path], what="an mmrec-rearm file")
            ledger.record_file(path, contents[path])
            _say(report, f"{action:<9} {path}")
            written.append(path)
    finally:
        ledger.save()  # also after a failure: what was written is recorded
    return written


def check_placeable(root: PathLike, files: Mapping[Path, Union[str, bytes]], *,
                    folders: Sequence[Path] = ()) -> None:
    """Raise the InstallError :func:`place_files` without ``force`` would raise; write nothing."""
    contents = {Path(p): (c.encode("utf-8") if isinstance(c, str) else bytes(c)) for p, c in files.items()}
    conflicts, _ = _plan(Ledger.load(root), contents, folders, True)
    if conflicts:
        raise _refusal(conflicts)


def _refusal(conflicts: Sequence[Tuple[Path, str]]) -> InstallError:
    listed = "; ".join(f"{path} ({why})" for path, why in conflicts)
    return InstallError(f"refusing to overwrite {listed}. Nothing was written. Keep your version by moving it "
                        "away, or pass --force to move each to <name>.bak first.")


def _plan(ledger: Ledger, contents: Mapping[Path, bytes], folders: Sequence[Path], update: bool) -> tuple:
    """(conflicts [(path, why)], actions [(path, wrote | unchanged | updated)]) of placing ``contents``."""
    conflicts: List[Tuple[Path, str]] = []
    for folder in folders:
        if (folder.exists() or folder.is_symlink()) and not ledger.has_folder(folder):
            conflicts.append((folder, "a folder mmrec-rearm did not create"))
    moved_folders = [folder for folder, _ in conflicts]
    actions: List[Tuple[Path, str]] = []
    for path, content in contents.items():
        state = ledger.state(path)
        if state == "absent" or any(folder in path.parents for folder in moved_folders):
            actions.append((path, "wrote"))
        elif path.is_file() and not path.is_symlink() and path.stat().st_size == len(content) \
                and path.read_bytes() == content:
            actions.append((path, "unchanged"))
        elif state == "ours" and update:
            actions.append((path, "updated"))
        else:
            why = _WHY.get(state, "an earlier mmrec-rearm version of this file differs from the new one")
            conflicts.append((path, why))
            actions.append((path, "wrote"))
    return conflicts, actions


def _move_aside(ledger: Ledger, path: Path, why: str, report: Report) -> Path:
    backup = backup_name(path)
    os.replace(path, backup)
    ledger.forget(ledger.key(path))
    _say(report, f"moved     {path} -> {backup} ({why})")
    return backup


# --------------------------------------------------------------------------------------------
# install / uninstall


def install(mmrec_dir: PathLike, *, force: bool = False, report: Report = print) -> List[Path]:
    """Install the model shims and our YAML files into the MMRec checkout at ``mmrec_dir``.

    Returns the paths of all our files (each reported as ``wrote`` / ``unchanged`` / ``updated``).
    Idempotent. Refuses, before writing anything, when ``mmrec_dir`` is not an MMRec checkout or a
    target exists that is not ours or changed since we wrote it (``force``: moved to ``.bak``).
    The shim imports ``mmrec_rearm``, so MMRec's Python must have mmrec-rearm installed.
    """
    root = find_checkout(mmrec_dir)
    return place_files(root, planned_files(root), force=force, report=report)


def uninstall(mmrec_dir: PathLike, *, force: bool = False, report: Report = print) -> List[Path]:
    """Remove what mmrec-rearm put into the checkout and is unchanged; return the removed paths.

    Files and folders come from the ledger only. A listed file whose bytes changed stays and is
    reported (``force``: moved to ``FILE.bak``); a listed folder is removed only when everything in
    it is ours and unchanged (``force``: otherwise moved to ``FOLDER.bak``). The compiled
    ``__pycache__/<name>.*.pyc`` of a removed shim goes too (git-ignored by MMRec, stale once the
    shim is gone). Afterwards the ledger is deleted: whatever stayed is the user's.
    """
    root = find_checkout(mmrec_dir)
    ledger = Ledger.load(root)
    if not ledger.entries:
        _say(report, f"nothing of mmrec-rearm recorded in {root} (no {LEDGER_NAME}){_legacy_hint(root)}")
        return []
    removed: List[Path] = []
    grouped = set()
    for key in [k for k in ledger.entries if not _inside(ledger.resolve(k), (root, data_root(root)))]:
        _say(report, f"skipped   {ledger.resolve(key)}: listed in the ledger but outside the checkout and MMRec's "
                     "data folder, where mmrec-rearm never writes; left alone")
        ledger.forget(key)
    for folder_entry in ledger.folders():
        members = list(ledger.files_under(folder_entry.key))
        grouped.update(entry.key for entry in members)
        removed += _remove_folder(ledger, ledger.resolve(folder_entry.key), members, force, report)
    for key in [k for k, e in ledger.entries.items() if not e.is_folder and k not in grouped]:
        removed += _remove_file(ledger, ledger.resolve(key), force, report)
    ledger.entries.clear()
    ledger.save()
    return removed


def _inside(path: Path, folders: Sequence[Path]) -> bool:
    absolute = os.path.abspath(path)
    return any(os.path.commonpath([absolute, os.path.abspath(folder)]) == os.path.abspath(folder)
               for folder in folders)


def _remove_file(ledger: Ledger, path: Path, force: bool, report: Report) -> List[Path]:
    state = ledger.state(path)
    if state == "absent":
        _say(report, f"gone      {path} (already removed)")
        return []
    if state != "ours":
        if force:
            _move_aside(ledger, path, "changed since mmrec-rearm wrote it", report)
        else:
            _say(report, f"kept      {path}: changed since mmrec-rearm wrote it, so it is yours now (delete it "
                         "yourself, or uninstall --force moves it to .bak)")
        return []
    path.unlink()
    _say(report, f"removed   {path}")
    removed = [path]
    if path.suffix == ".py":
        for pyc in sorted((path.parent / "__pycache__").glob(f"{path.stem}.*.pyc")):
            pyc.unlink()
            removed.append(pyc)
            _say(report, f"removed   {pyc}")
    return removed


def _remove_folder(ledger: Ledger, folder: Path, members, force: bool, report: Report) -> List[Path]:
    if not (folder.exists() or folder.is_symlink()):
        _say(report, f"gone      {folder}/ (already removed)")
        return []
    listed = {ledger.resolve(entry.key) for entry in members}
    others = [] if folder.is_dir() and not folder.is_symlink() else [folder]
    derived = []
    for path in _walk(folder) if not others else ():
        if path in listed and ledger.state(path) == "ours":
            continue
        (derived if path not in listed and _regenerable(path.relative_to(folder)) else others).append(path)
    if others:
        shown = ", ".join(str(p.relative_to(folder)) if p != folder else str(p) for p in others[:5])
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        if force:
            _move_aside(ledger, folder, f"it holds files mmrec-rearm did not write or that changed: {shown}{more}",
                        report)
        else:
            _say(report, f"kept      {folder}/: it holds files mmrec-rearm did not write or that changed ({shown}{more}), "
                         "so it is yours now (delete it yourself, or uninstall --force moves it to .bak)")
        return []
    for path in list(listed) + derived:
        if path.is_file() or path.is_symlink():
            path.unlink()
    try:  # rmdir, never rmtree: a file that appeared meanwhile stops the removal instead of going with it
        for base, dirs, _names in os.walk(folder, topdown=False):
            for name in dirs:
                os.rmdir(Path(base) / name)
        folder.rmdir()
    except OSError as exc:
        _say(report, f"kept      {folder}/: not empty after removing mmrec-rearm's files ({exc.strerror})")
        return list(listed)
    caches = f" and {len(derived)} cache file(s) computed from them" if derived else ""
    _say(report, f"removed   {folder}/ ({len(listed)} file(s) of mmrec-rearm{caches})")
    return [folder]


#: Files computed from a dataset folder's own files, which go with it: MMRec's model caches and the
#: DRAGON / DualGNN user graph (``mmrec-rearm user-graph`` rebuilds it in seconds).
_REGENERABLE = re.compile(r"(mm|image|text)_adj_[\w.-]*\.pt|user_graph_dict\.npy")


def _regenerable(relative: Path) -> bool:
    """A cache inside a dataset folder we created: our graph cache folder, or one of :data:`_REGENERABLE`."""
    parts = relative.parts
    if parts[0] == ".rearm_cache":
        return len(parts) > 1 and (parts[1].startswith("graphs.lmdb") or parts[1].endswith(".lock"))
    return len(parts) == 1 and bool(_REGENERABLE.fullmatch(parts[0]))


def _walk(folder: Path) -> Iterable[Path]:
    """Every file, link and special entry below ``folder`` (folders themselves are not listed)."""
    for base, dirs, names in os.walk(folder):
        for name in names:
            yield Path(base) / name
        for name in dirs:
            if (Path(base) / name).is_symlink():
                yield Path(base) / name


def _legacy_hint(root: Path) -> str:
    """Files at our paths that carry the first line older mmrec-rearm versions wrote (before the ledger)."""
    old = "# written by mmrec-rearm install; remove with: mmrec-rearm uninstall"
    found = []
    for path in planned_files(root):
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                if handle.readline().rstrip("\r\n") in (old, MARKER):
                    found.append(str(path))
        except OSError:
            continue
    if not found:
        return ""
    return (f"; {', '.join(found)} carry the marker of an older mmrec-rearm: run `{command('install', '--mmrec', root)}` "
            "(it adopts files identical to its own) and then uninstall, or delete them yourself")
