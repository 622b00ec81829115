"""Install REARM into an MMRec checkout, remove it again, and run a short demo training.

MMRec finds a model by file name: ``-m REARM`` imports ``src/models/rearm.py`` and takes its
attribute ``REARM``; its configuration is read from ``src/configs/model/REARM.yaml`` (after
``overall.yaml`` and ``src/configs/dataset/<dataset>.yaml``). So installing means writing:

* ``src/models/rearm.py``: a shim that re-exports :class:`mmrec_rearm.model.rearm.REARM`, and one
  such line per Table-2 baseline of :data:`SHIMS` (``micro.py``, ``diffmm.py``, ``apegnn.py``,
  ``mgdn.py``, ``miggt.py``); they need ``mmrec-rearm`` to be pip-installed in the environment
  that runs MMRec;
* each ``configs/model/*.yaml`` / ``configs/dataset/*.yaml`` shipped with this package, into
  ``src/configs/model/`` / ``src/configs/dataset/``.

Every file written starts with :data:`MARKER` on its own first line. That line is how ownership is
decided: a file at one of our paths without it belongs to someone else and is never overwritten,
and :func:`uninstall` deletes exactly the marked files, so the checkout's ``git status`` returns to
what it was. :func:`quickstart` additionally writes the demo dataset folder (marked by a
:data:`DATA_MARKER_FILE` inside it) and its dataset YAML, then runs MMRec's own ``quick_start`` in a
subprocess.
"""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, TextIO, Tuple, Union

from .errors import InstallError

__all__ = [
    "MARKER", "DATA_MARKER_FILE", "SHIM_RELPATH", "SHIMS", "shim_files", "REQUIRED", "QuickstartResult",
    "find_checkout", "package_configs_dir", "planned_files", "install", "uninstall",
    "quickstart", "parse_final_metrics",
]

PathLike = Union[str, "os.PathLike[str]"]
Report = Optional[Callable[[str], None]]

#: First line of every file we write; ``#`` starts a comment in both Python and YAML.
MARKER = "# written by mmrec-rearm install; remove with: mmrec-rearm uninstall"
#: File inside a dataset folder that quickstart generated (content: MARKER).
DATA_MARKER_FILE = ".mmrec-rearm"
SHIM_RELPATH = Path("src", "models", "rearm.py")

# ---- model shims: one line each, src/models/<name lower>.py (MMRec imports a model by file name)
#: MMRec model name -> the module of this package that defines the class of that name.
#: MIGGT is the REARM paper's "MIG-GT" (a class name cannot hold the hyphen).
SHIMS: Dict[str, str] = {
    "REARM": "mmrec_rearm.model.rearm",
    # the Table-2 baselines MMRec lacks
    "MICRO": "mmrec_rearm.baselines.micro",
    "DiffMM": "mmrec_rearm.baselines.diffmm",
    "ApeGNN": "mmrec_rearm.baselines.apegnn",
    "MGDN": "mmrec_rearm.baselines.mgdn",
    "MIGGT": "mmrec_rearm.baselines.miggt",
}


def shim_files() -> Dict[Path, str]:
    """Relative path -> body (without the marker) of every model shim of :data:`SHIMS`."""
    return {Path("src", "models", f"{name.lower()}.py"): f"from {module} import {name}  # noqa: F401\n"
            for name, module in SHIMS.items()}
# ---- end of model shims

#: What makes a folder an MMRec checkout (relative to its root).
REQUIRED = ("src/main.py", "src/models/", "src/configs/model/", "src/common/abstract_recommender.py")
#: Package config sub-folder -> destination inside the checkout.
CONFIG_DESTINATIONS = {"model": Path("src", "configs", "model"),
                       "dataset": Path("src", "configs", "dataset")}
#: Folders uninstall scans for marked files (pattern per folder).
_SCANNED = ((Path("src", "models"), "*.py"), (Path("src", "configs", "model"), "*.yaml"),
            (Path("src", "configs", "dataset"), "*.yaml"))
_TAIL_LINES = 40


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


def _marked(text: str) -> str:
    return MARKER + "\n" + text


def planned_files(root: Path) -> Dict[Path, str]:
    """Every file :func:`install` writes under checkout ``root`` -> its full content."""
    files = {root / rel: _marked(body) for rel, body in shim_files().items()}
    configs = package_configs_dir()
    for sub, destination in CONFIG_DESTINATIONS.items():
        folder = configs / sub
        if not folder.is_dir():
            continue
        for source in sorted(folder.glob("*.yaml")):
            files[root / destination / source.name] = _marked(source.read_text(encoding="utf-8"))
    return files


def _is_ours(path: Path) -> bool:
    """True when ``path`` is a file whose first line is exactly :data:`MARKER`."""
    if not path.is_file():
        return False
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        return handle.readline().rstrip("\r\n") == MARKER


def _refuse_foreign(paths) -> None:
    """InstallError naming every path that exists but is not ours (nothing has been written yet)."""
    foreign = [p for p in paths if (p.exists() or p.is_symlink()) and not _is_ours(p)]
    if foreign:
        listed = ", ".join(str(p) for p in foreign)
        raise InstallError(f"refusing to overwrite {listed}: not written by mmrec-rearm (its first line "
                           f"is not {MARKER!r}); move it away or delete it, then re-run")


def _write_files(files: Mapping[Path, str], report: Report) -> List[Path]:
    _refuse_foreign(files)
    written = []
    for path, content in files.items():
        if path.is_file() and path.read_text(encoding="utf-8") == content:
            _say(report, f"unchanged {path}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
            _say(report, f"wrote     {path}")
        written.append(path)
    return written


def _say(report: Report, line: str) -> None:
    if report is not None:
        report(line)


# --------------------------------------------------------------------------------------------
# install / uninstall


def install(mmrec_dir: PathLike, *, report: Report = print) -> List[Path]:
    """Install the REARM shim and our YAML files into the MMRec checkout at ``mmrec_dir``.

    Returns the paths of all our files (written or already identical; each is reported to
    ``report`` as ``wrote`` / ``unchanged``). Idempotent. Raises InstallError, before writing
    anything, when ``mmrec_dir`` is not an MMRec checkout or a target file exists without our
    marker. The shim imports ``mmrec_rearm``, so MMRec's Python must have mmrec-rearm installed.
    """
    root = find_checkout(mmrec_dir)
    return _write_files(planned_files(root), report)


def uninstall(mmrec_dir: PathLike, *, report: Report = print) -> List[Path]:
    """Remove everything mmrec-rearm put into the checkout; return the removed paths.

    Removes the files whose first line is :data:`MARKER` in ``src/models/*.py``,
    ``src/configs/model/*.yaml`` and ``src/configs/dataset/*.yaml``, the compiled
    ``src/models/__pycache__/<shim>.*.pyc`` (git-ignored by MMRec, but stale once the shim is gone) and
    every dataset folder under MMRec's data folder that holds :data:`DATA_MARKER_FILE`. Files without
    the marker are left alone, so ``git status`` returns to its state before :func:`install` /
    :func:`quickstart` (MMRec's own logs under ``src/log/`` are kept; git ignores ``*.log``).
    """
    root = find_checkout(mmrec_dir)
    removed: List[Path] = []
    for folder, pattern in _SCANNED:
        for path in sorted((root / folder).glob(pattern)):
            if _is_ours(path):
                path.unlink()
                removed.append(path)
    for rel in shim_files():
        for pyc in sorted((root / rel.parent / "__pycache__").glob(f"{rel.stem}.*.pyc")):
            pyc.unlink()
            removed.append(pyc)
    data_root = _data_root(root)
    if data_root.is_dir():
        for folder in sorted(p for p in data_root.iterdir() if p.is_dir() and not p.is_symlink()):
            if _is_ours(folder / DATA_MARKER_FILE):
                shutil.rmtree(folder)
                removed.append(folder)
    for path in removed:
        _say(report, f"removed   {path}")
    if not removed:
        _say(report, f"nothing of mmrec-rearm found in {root}")
    return removed


# --------------------------------------------------------------------------------------------
# quickstart


@dataclass
class QuickstartResult:
    """Outcome of :func:`quickstart`: MMRec's final best-validation metrics and the test metrics at
    that epoch (keys like ``recall@20``), plus where things are."""

    model: str
    dataset: str
    epochs: int
    valid: Dict[str, float]
    test: Dict[str, float]
    parameters: str = ""
    log_file: Optional[Path] = None
    seconds: float = 0.0
    installed: List[Path] = field(default_factory=list)

    def summary(self, ks: Tuple[int, ...] = (10, 20)) -> str:
        """A few lines: recall/ndcg at ``ks`` for valid and test."""
        lines = [f"{self.model} on {self.dataset}, {self.epochs} epoch(s), {self.seconds:.1f}s "
                 f"({self.parameters})"]
        for name, metrics in (("valid", self.valid), ("test", self.test)):
            shown = [f"{key}={metrics[key]:.4f}" for k in ks for key in (f"recall@{k}", f"ndcg@{k}")
                     if key in metrics]
            lines.append(f"  {name:5s} " + "  ".join(shown))
        if self.log_file is not None:
            lines.append(f"  MMRec log: {self.log_file}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


_METRIC = re.compile(r"([A-Za-z0-9_]+@\d+):\s*(-?[0-9.]+(?:[eE][-+]?\d+)?)")
_BEST = "█ BEST █"


def parse_final_metrics(output: str) -> Tuple[Dict[str, float], Dict[str, float], str]:
    """(valid, test, parameters) from the block MMRec's ``quick_start`` logs last::

        █████████████ BEST ████████████████
        <time> INFO \\tParameters: ['seed']=(999,),
        Valid: recall@5: 0.0683    recall@10: 0.1075    ...,
        Test: recall@5: 0.0417    ...

    Raises InstallError when the block is absent (the run did not finish).
    """
    start = output.rfind(_BEST)
    if start < 0:
        raise InstallError("MMRec's output has no final 'BEST' block: the run did not finish")
    block = output[start:].splitlines()
    found: Dict[str, str] = {}
    parameters = ""
    for line in block:
        stripped = line.strip()
        if "Parameters:" in stripped and not parameters:
            parameters = stripped.split("Parameters:", 1)[1].strip().rstrip(",")
        for label in ("Valid:", "Test:"):
            if stripped.startswith(label) and label not in found:
                found[label] = stripped[len(label):]
    if "Valid:" not in found or "Test:" not in found:
        raise InstallError("MMRec's final 'BEST' block lacks its 'Valid:' or 'Test:' line")

    def metrics(text: str) -> Dict[str, float]:
        return {key.lower(): float(value) for key, value in _METRIC.findall(text)}

    return metrics(found["Valid:"]), metrics(found["Test:"]), parameters


def _data_root(root: Path) -> Path:
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


def _place_demo_dataset(root: Path, name: str, n_users: int, n_items: int, seed: int,
                        report: Report) -> List[Path]:
    from . import synth

    folder = _data_root(root) / name
    yaml_path = root / "src" / "configs" / "dataset" / f"{name}.yaml"
    if folder.exists() and not _is_ours(folder / DATA_MARKER_FILE):
        raise InstallError(f"refusing to write the demo dataset into {folder}: the folder exists and "
                           f"was not made by mmrec-rearm (no {DATA_MARKER_FILE} file); choose another "
                           "dataset name or move the folder away")
    _refuse_foreign([yaml_path])
    folder = synth.make_demo_dataset(folder.parent, name=name, n_users=n_users, n_items=n_items,
                                     seed=seed)
    (folder / DATA_MARKER_FILE).write_text(MARKER + "\n", encoding="utf-8")
    _say(report, f"wrote     {folder}/ (demo dataset: {n_users} users x {n_items} items, seed {seed})")
    return [folder] + _write_files({yaml_path: _marked(synth.demo_dataset_yaml(name))}, report)


# Runs inside MMRec's src/. With single_point, every hyper-parameter list MMRec would grid over is
# cut to its first value (MMRec's own Config reads the YAMLs, so its float parsing applies).
_RUNNER = """\
import json, sys
from utils.configurator import Config
from utils.quick_start import quick_start
job = json.loads(sys.argv[1])
config = dict(job["config"])
if job["single_point"]:
    probe = Config(job["model"], job["dataset"], dict(config))
    for name in probe["hyper_parameters"]:
        if name not in config:
            value = probe[name]
            config[name] = [value[0]] if isinstance(value, list) and value else [value]
quick_start(model=job["model"], dataset=job["dataset"], config_dict=config, save_model=True)
"""


def _check_importable(python: str, module: str) -> None:
    done = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise InstallError(f"{python} cannot import {module} (needed by the shims in src/models/): install "
                           f"mmrec-rearm into MMRec's environment (pip install mmrec-rearm, or "
                           f"pip install -e <this repository>) or pass python=...\n{done.stderr[-2000:]}")


def _newest_log(root: Path, model: str, dataset: str, since: float) -> Optional[Path]:
    logs = [p for p in (root / "src" / "log").glob(f"{model}-{dataset}-*.log")
            if p.stat().st_mtime >= since - 1]
    return max(logs, key=lambda p: p.stat().st_mtime) if logs else None


def quickstart(
    mmrec_dir: PathLike,
    epochs: int = 3,
    python: str = sys.executable,
    *,
    model: str = "REARM",
    dataset: str = "rearm_demo",
    n_users: int = 2000,
    n_items: int = 1000,
    seed: int = 0,
    config: Optional[Mapping[str, object]] = None,
    single_point: bool = True,
    stream: Optional[TextIO] = None,
    timeout: Optional[float] = None,
    report: Report = print,
) -> QuickstartResult:
    """Install, write the seeded demo dataset, train ``model`` with MMRec for ``epochs`` epochs.

    The demo dataset goes to MMRec's data folder (``<checkout>/data/<dataset>/``, marked as ours)
    and its YAML to ``src/configs/dataset/<dataset>.yaml``. MMRec's ``quick_start`` then runs in a
    subprocess of ``python`` with cwd ``<checkout>/src`` (as ``python main.py`` would), its output
    streamed to ``stream`` (default stdout). ``config`` entries are passed to MMRec as its
    ``config_dict`` (they win over every YAML). With ``single_point`` (default) each hyper-parameter
    grid MMRec would search is cut to its first value, so one model is trained. ``model`` may be any
    MMRec model (the tests use ``LightGCN``). Returns the parsed final metrics and prints their
    summary; raises InstallError with the tail of the output when the run fails.
    """
    if epochs < 1:
        raise InstallError(f"epochs={epochs}: must be >= 1")
    out = stream if stream is not None else sys.stdout
    root = find_checkout(mmrec_dir)
    installed = install(root, report=report)
    installed += _place_demo_dataset(root, dataset, n_users, n_items, seed, report)
    ours = {name.lower(): module for name, module in SHIMS.items()}
    if model.lower() in ours:
        _check_importable(python, ours[model.lower()])

    job = {"model": model, "dataset": dataset, "single_point": bool(single_point),
           "config": {"epochs": int(epochs), **dict(config or {})}}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.time()
    tail: collections.deque = collections.deque(maxlen=_TAIL_LINES)
    captured: List[str] = []
    try:
        process = subprocess.Popen([python, "-c", _RUNNER, json.dumps(job)], cwd=root / "src",
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   encoding="utf-8", errors="replace", env=env)
    except OSError as exc:
        raise InstallError(f"cannot start {python}: {exc}; pass python=<MMRec's interpreter>") from exc
    # A silent hang would block the read loop, so the time limit kills from another thread.
    watchdog = threading.Timer(timeout, process.kill) if timeout is not None else None
    with process:
        assert process.stdout is not None
        if watchdog is not None:
            watchdog.start()
        try:
            for line in process.stdout:
                out.write(line)
                captured.append(line)
                tail.append(line)
            code = process.wait()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            out.flush()
    seconds = time.time() - started
    output = "".join(captured)
    if timeout is not None and seconds >= timeout and code != 0:
        raise InstallError(f"MMRec quick_start exceeded {timeout:g}s and was stopped; last output:\n"
                           + "".join(tail))
    if code != 0:
        raise InstallError(f"MMRec quick_start failed (exit status {code}) for model={model} "
                           f"dataset={dataset} in {root / 'src'}; last output:\n" + "".join(tail))
    try:
        valid, test, parameters = parse_final_metrics(output)
    except InstallError as exc:
        raise InstallError(f"{exc}; last output:\n" + "".join(tail)) from None
    result = QuickstartResult(model=model, dataset=dataset, epochs=int(epochs), valid=valid, test=test,
                              parameters=parameters, log_file=_newest_log(root, model, dataset, started),
                              seconds=seconds, installed=installed)
    out.write("\n" + result.summary() + "\n")
    out.flush()
    return result
