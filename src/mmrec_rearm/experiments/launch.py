"""Parent side of one run: start the runner subprocess in MMRec's ``src``, stream its progress,
keep its whole output as a log file, and turn whatever happened into a result dict.

The subprocess is started with :func:`mmrec_rearm.processes.start`: it is killed when this process
dies, even by ``kill -9``, and Ctrl-C here stops it (:func:`mmrec_rearm.processes.stop`) before the
interrupt goes on. ``env`` adds variables for it (a parallel slot's thread counts), ``on_start``
receives the process (so a caller running several at once can end them all on an interrupt).

A run that crashes, is killed by a signal, times out or cannot import a package becomes a
``failed`` result with a one-line ``message`` (naming the missing package when there is one)
and the tail of the output in ``error``; it never raises, so the other runs go on.

Resumable runs: with ``state_path`` the runner saves the training state there after every epoch
and, with ``resume``, continues from it (:mod:`.runner_state`). The runner locks a file beside it,
so two processes never train the same run at once. The state is deleted once the run has finished
``ok`` (``keep_state`` keeps it); after a crash, a kill, a timeout or a stop it stays, and the next
launch of the same run continues from its last finished epoch.

Stopping a run from outside: an ``on_event`` handler may raise :class:`StopRun` (a pruner that
has seen enough validation scores, say); the process is stopped, the state kept, and the result is
``status: "stopped"`` with the history reported so far. Any other ``ValueError`` / ``TypeError``
from the handler is ignored (a display must never cost a run); other exceptions stop the process
and propagate.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

from .. import processes
from ..atomic import write_text
from . import runner as _runner_module
from .plan import RunSpec
from .runner_events import PROGRESS_PREFIX

RUNNER_PATH = Path(_runner_module.__file__).resolve()
_MISSING_MODULE = re.compile(r"No module named '([A-Za-z0-9_]+)")
EventHandler = Callable[[dict], None]

#: (pattern in the error text, explanation appended to the message) for failures of MMRec itself.
KNOWN_FAILURES = (
    (r"cannot assign '[\w.]+' as parameter 'result_embed'",
     "known MMRec bug on CPU: DRAGON/DualGNN create result_embed as nn.Parameter(...).to(device); "
     "on CPU .to() keeps the Parameter, so forward() cannot overwrite it. The runner's fix for this is "
     "off (MMREC_REARM_HOST_FIXES=0) or did not reach the model; without it these models only run on a GPU"),
    (r"module 'numpy' has no attribute 'float'",
     "MMRec needs numpy < 1.24 (it uses np.float); run it with a Python that has MMRec's pinned numpy"),
    (r"has no attribute '_update'",
     "MMRec's graph models need scipy < 1.12 (dok_matrix._update); use MMRec's pinned scipy"),
)


def quick_start_config(spec: RunSpec, extra: Optional[Dict[str, Any]] = None) -> dict:
    """The ``config_dict`` given to MMRec's quick_start for one run.

    ``hyper_parameters: ['seed']`` with ``seed: [s]`` makes quick_start's grid exactly one run;
    the configuration's values are scalars, so MMRec uses them as they are.
    """
    config = dict(spec.config)
    config.update(extra or {})
    config["seed"] = [spec.seed]
    config["hyper_parameters"] = ["seed"]
    if spec.epochs is not None:
        config["epochs"] = spec.epochs
    return config


class StopRun(Exception):
    """Raised by an ``on_event`` handler to end a run early; the message becomes the result's."""


def _tail(text: str, lines: int = 40, chars: int = 4000) -> str:
    return "\n".join(text.splitlines()[-lines:])[-chars:]


OnStart = Callable[[subprocess.Popen], None]


def launch(spec: RunSpec, src: Path, python: str, work_dir: Path, *, extra: Optional[Dict[str, Any]] = None,
           save_model: bool = False, on_event: Optional[EventHandler] = None,
           timeout_s: Optional[float] = None, env: Optional[Mapping[str, str]] = None,
           on_start: Optional[OnStart] = None, state_path: Optional[Path] = None, resume: bool = True,
           keep_state: bool = False) -> dict:
    """Run ``spec`` through MMRec in a subprocess; returns the runner's result plus ``log_path``.

    ``work_dir`` receives ``<key>.json`` (spec), ``<key>.result.json`` and ``<key>.log`` (the
    subprocess's full stdout + stderr, MMRec's log lines included). ``on_event`` receives every
    progress event (:mod:`.runner_events`) as a dict and may raise :class:`StopRun`. ``env``,
    ``on_start``, ``state_path``, ``resume``, ``keep_state``: see the module doc.
    """
    state = Path(os.path.abspath(state_path)) if state_path is not None else None
    result = _launch(spec, src, python, work_dir, extra=extra, save_model=save_model, on_event=on_event,
                     timeout_s=timeout_s, env=env, on_start=on_start, state_path=state, resume=resume)
    if state is not None and result.get("status") == "ok" and not keep_state and state.exists():
        state.unlink()
    return result


def _launch(spec: RunSpec, src: Path, python: str, work_dir: Path, *, extra, save_model, on_event, timeout_s,
            env, on_start, state_path: Optional[Path], resume: bool) -> dict:
    work_dir = Path(os.path.abspath(work_dir))  # the subprocess runs in MMRec's src/, not here
    work_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{spec.model}-seed{spec.seed}-{spec.key}"
    spec_path, result_path, log_path = (work_dir / f"{stem}.json", work_dir / f"{stem}.result.json",
                                        work_dir / f"{stem}.log")
    for stale in (result_path,):
        if stale.exists():
            stale.unlink()
    write_text(spec_path, json.dumps({
        "model": spec.model, "dataset": spec.dataset, "config_dict": quick_start_config(spec, extra),
        "save_model": bool(save_model), "result_path": str(result_path), "run_key": spec.key,
        "state_path": str(state_path) if state_path is not None else "", "resume": bool(resume)},
        indent=1, default=str), what="the run's spec")

    env = {**os.environ, "PYTHONUNBUFFERED": "1", **dict(env or {})}
    timed_out = threading.Event()
    stopped: Dict[str, Any] = {}
    try:
        process = processes.start([python, str(RUNNER_PATH), str(spec_path)], cwd=str(src), env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  encoding="utf-8", errors="replace", bufsize=1)
    except OSError as exc:
        return {"status": "failed", "message": f"cannot start {python}: {exc}", "error": str(exc),
                "log_path": str(log_path), "wall_s": 0.0}
    if on_start is not None:
        on_start(process)

    def _expire() -> None:
        timed_out.set()
        process.kill()

    timer = threading.Timer(timeout_s, _expire) if timeout_s else None
    if timer:
        timer.daemon = True
        timer.start()
    output = []
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                if line.startswith(PROGRESS_PREFIX):
                    try:
                        event = json.loads(line[len(PROGRESS_PREFIX):])
                    except ValueError:
                        continue
                    if event.get("event") == "epoch":
                        stopped.setdefault("history", []).append(
                            {k: event.get(k) for k in ("epoch", "loss", "losses", "train_s", "eval_s", "valid_score")})
                    if on_event is not None:
                        try:
                            on_event(event)
                        except StopRun as stop:
                            stopped["message"] = str(stop) or "stopped by the caller"
                            break
                        except (ValueError, TypeError):
                            pass
                else:
                    output.append(line)
                    del output[:-200]
        returncode = processes.stop(process) if "message" in stopped else process.wait()
    except BaseException:
        processes.stop(process)  # Ctrl-C in the parent: leave no orphan training behind
        raise
    finally:
        if timer:
            timer.cancel()

    text = "".join(output)
    result: Dict[str, Any] = {}
    if "message" in stopped:
        history = stopped.get("history", [])
        return {"status": "stopped", "message": stopped["message"], "history": history,
                "epochs_run": len(history), "returncode": returncode, "log_path": str(log_path)}
    if result_path.is_file():
        try:
            result = json.loads(result_path.read_text(encoding="utf-8"))
        except ValueError:
            result = {}
    if not result:
        if timed_out.is_set():
            message = f"timed out after {timeout_s:g} s and was killed"
        elif returncode < 0:
            name = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else str(-returncode)
            message = f"the MMRec process was killed by signal {name} (a crash inside a native library?)"
        else:
            message = f"the MMRec process exited with code {returncode} without writing a result"
        missing = _MISSING_MODULE.search(text)
        result = {"status": "failed", "message": message, "error": _tail(text),
                  "missing_package": missing.group(1) if missing else None}
    elif result.get("status") != "ok" and not result.get("error"):
        result["error"] = _tail(text)
    if result.get("status") != "ok":
        haystack = f"{result.get('message') or ''}\n{result.get('error') or ''}"
        for pattern, hint in KNOWN_FAILURES:
            if re.search(pattern, haystack):
                result["hint"] = hint
                result["message"] = f"{result.get('message')} [{hint}]"
                break
    result["returncode"] = returncode
    result["log_path"] = str(log_path)
    return result


def state_file(results_root: Path, key: str) -> Path:
    """Where the training state of run ``key`` lives in a results folder ``<results>/<dataset>``."""
    return Path(results_root) / "state" / f"{key}.pt"


def launch_run(spec: RunSpec, src: Path, python: str, results_root: Path, *, extra: Optional[Dict[str, Any]] = None,
               on_event: Optional[EventHandler] = None, timeout_s: Optional[float] = None, save_model: bool = False,
               resume: bool = True, keep_state: bool = False, env: Optional[Mapping[str, str]] = None,
               on_start: Optional[OnStart] = None) -> dict:
    """:func:`launch` with the layout of a results folder ``<results>/<dataset>/``: ``logs/`` (spec,
    result, output), ``state/<key>.pt`` (the training state, resumed from when present) and
    ``checkpoints/<key>.pt`` (REARM's best-validation weights, written by the runner). Every command
    that trains (``run``, ``compare``, ``ablate``, ``sensitivity``, ``tune``) starts its runs here."""
    return launch(spec, src, python, Path(results_root) / "logs", extra=extra, save_model=save_model,
                  on_event=on_event, timeout_s=timeout_s, env=env, on_start=on_start,
                  state_path=state_file(results_root, spec.key), resume=resume, keep_state=keep_state)
