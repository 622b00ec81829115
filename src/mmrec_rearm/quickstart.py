"""``quickstart``: install REARM, write the seeded demo dataset, train a few epochs with MMRec.

The demo dataset goes to MMRec's data folder (``<checkout>/data/<dataset>/``) and its YAML to
``src/configs/dataset/<dataset>.yaml``; both are written with the install files in one
:func:`~mmrec_rearm.install.place_files` call, so they are in the install ledger and every refusal
(a file or folder that is not ours) happens before anything is written. MMRec's own
``quick_start`` then runs in a subprocess (:mod:`.processes`: it never outlives this process;
Ctrl-C stops it and ends with one line).
"""
from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, TextIO, Tuple, Union

from . import processes
from .errors import InstallError, Interrupted
from .hints import command
from .install import (MODEL_SHIMS, Report, check_placeable, data_root, find_checkout, marked, place_files,
                      planned_files)

__all__ = ["QuickstartResult", "quickstart", "parse_final_metrics", "demo_files", "place_demo_dataset"]

PathLike = Union[str, "os.PathLike[str]"]
_TAIL_LINES = 40


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


def demo_files(root: Path, name: str, n_users: int, n_items: int, seed: int) -> Tuple[Path, Dict[Path, bytes]]:
    """(demo dataset folder, path -> content) of the demo dataset and its MMRec dataset YAML."""
    from . import synth

    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise InstallError(f"dataset name {name!r}: must be a plain folder name (no slashes, not hidden)")
    folder = data_root(root) / name
    files: Dict[Path, bytes] = {folder / file_name: content for file_name, content in
                                synth.demo_dataset_files(name, n_users=n_users, n_items=n_items, seed=seed).items()}
    files[root / "src" / "configs" / "dataset" / f"{name}.yaml"] = marked(synth.demo_dataset_yaml(name)).encode("utf-8")
    return folder, files


def place_demo_dataset(mmrec_dir: PathLike, name: str = "rearm_demo", n_users: int = 2000, n_items: int = 1000,
                       seed: int = 0, *, force: bool = False, report: Report = print) -> Path:
    """Write the demo dataset and its dataset YAML into the checkout, recorded in the install ledger
    (what :func:`quickstart` does besides installing and training). -> the dataset folder."""
    root = find_checkout(mmrec_dir)
    folder, files = demo_files(root, name, n_users, n_items, seed)
    place_files(root, files, folders=[folder], force=force, report=report)
    return folder


# Runs inside MMRec's src/. With single_point, every hyper-parameter list MMRec would grid over is
# cut to its first value (MMRec's own Config reads the YAMLs, so its float parsing applies).
# Ctrl-C ends it quietly: the parent reports the interruption in one line.
_RUNNER = """\
import json, sys
try:
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
except KeyboardInterrupt:
    sys.exit(130)
"""


def _check_importable(python: str, module: str) -> None:
    done = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise InstallError(f"{python} cannot import {module} (needed by the installed model shim): install "
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
    force: bool = False,
    report: Report = print,
) -> QuickstartResult:
    """Install, write the seeded demo dataset, train ``model`` with MMRec for ``epochs`` epochs.

    MMRec's ``quick_start`` runs in a subprocess of ``python`` with cwd ``<checkout>/src`` (as
    ``python main.py`` would), its output streamed to ``stream`` (default stdout). ``config``
    entries are passed to MMRec as its ``config_dict`` (they win over every YAML). With
    ``single_point`` (default) each hyper-parameter grid MMRec would search is cut to its first
    value, so one model is trained. ``model`` may be any MMRec model (the tests use ``LightGCN``).
    Returns the parsed final metrics and prints their summary; raises InstallError with the tail of
    the output when the run fails, and :class:`~mmrec_rearm.errors.Interrupted` on Ctrl-C.
    Every refusal (not an MMRec checkout, a file or folder that is not ours, a Python that cannot
    import this package) comes before anything is written.
    """
    if epochs < 1:
        raise InstallError(f"epochs={epochs}: must be >= 1")
    out = stream if stream is not None else sys.stdout
    root = find_checkout(mmrec_dir)
    folder, demo = demo_files(root, dataset, n_users, n_items, seed)
    files = {**planned_files(root), **demo}
    if not force:
        check_placeable(root, files, folders=[folder])  # the cheap refusal first
    if model in MODEL_SHIMS:
        _check_importable(python, MODEL_SHIMS[model])
    installed = place_files(root, files, folders=[folder], force=force, report=report)

    job = {"model": model, "dataset": dataset, "single_point": bool(single_point),
           "config": {"epochs": int(epochs), **dict(config or {})}}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.time()
    tail: collections.deque = collections.deque(maxlen=_TAIL_LINES)
    captured: List[str] = []
    try:
        process = processes.start([python, "-c", _RUNNER, json.dumps(job)], cwd=root / "src",
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
        except KeyboardInterrupt:
            processes.stop(process)
            raise Interrupted(
                f"quickstart stopped the {model} training on {dataset} after {time.time() - started:.0f} s "
                f"(nothing of it was kept). {model} stays installed in {root} and the demo dataset in {folder}; "
                f"run the same command to train again, or `{command('uninstall', '--mmrec', root)}` to remove both.") from None
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
