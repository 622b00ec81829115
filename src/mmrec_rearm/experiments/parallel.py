"""How several MMRec runs share one machine: one *slot* per concurrent run, each with its share of
the CPU threads or its own GPU.

A slot carries the environment of its runs' subprocesses (``OMP_NUM_THREADS`` and the BLAS thread
counts: the cores divided by the number of slots, so K runs at once do not fight over the same
cores) and the MMRec settings that place it on a device (``use_gpu`` / ``gpu_id``: MMRec itself
sets ``CUDA_VISIBLE_DEVICES`` from ``gpu_id``, so that is the one place to choose the GPU). Both
travel outside the run's configuration, so a run's key, and its record, never depend on the
slot it happened to run in.

One slot with no device (the default) changes nothing: the runs see the environment as it is.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ..errors import ConfigError
from ..processes import sigterm_as_interrupt
from .prepare import device_settings

#: Variables that size the thread pools of torch (OpenMP, MKL) and of numpy/scipy's BLAS.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


#: Seconds between two run starts when runs go in parallel: MMRec names its log file after the model,
#: the dataset and the second the run starts, so two runs started in the same second would share
#: (and truncate) one log file.
START_SPACING_S = 1.05


class RunningProcesses:
    """The run subprocesses started so far, so that an interrupt can end every one of them, and the
    spacing of their starts (:data:`START_SPACING_S`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: List[subprocess.Popen] = []
        self._gate = threading.Lock()
        self._last_start = 0.0

    def space_start(self) -> None:
        """Wait until :data:`START_SPACING_S` has passed since the previous start of this pool."""
        with self._gate:
            delay = self._last_start + START_SPACING_S - time.monotonic()  # read now: tests set it to 0
            if delay > 0:
                time.sleep(delay)
            self._last_start = time.monotonic()

    def add(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes = [p for p in self._processes if p.poll() is None]
            self._processes.append(process)

    def kill_all(self) -> int:
        """Kill every subprocess still running; -> how many were."""
        with self._lock:
            alive = [p for p in self._processes if p.poll() is None]
            for process in alive:
                process.kill()
            return len(alive)


@dataclass(frozen=True)
class Slot:
    """One place a run can execute. ``env``: variables for its subprocess; ``config``: unhashed MMRec
    settings (device); ``label``: shown on its progress lines ("" for the single sequential slot)."""
    index: int
    label: str
    env: Dict[str, str] = field(default_factory=dict)
    config: Dict[str, Any] = field(default_factory=dict)
    running: RunningProcesses = field(default_factory=RunningProcesses, compare=False, repr=False)


def available_cores() -> int:
    """CPU cores this process may use (the affinity mask, which Slurm and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def thread_budget(environ: Optional[Dict[str, str]] = None) -> int:
    """Threads to share among the slots: ``OMP_NUM_THREADS`` when the user set it, else the cores."""
    environ = os.environ if environ is None else environ
    try:
        value = int(str(environ.get("OMP_NUM_THREADS", "")).strip())
    except ValueError:
        value = 0
    return value if value > 0 else available_cores()


def thread_env(threads: int) -> Dict[str, str]:
    """The environment that gives a run's subprocess ``threads`` threads (torch's OpenMP, MKL, BLAS)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"--threads {threads!r}: expected a positive number of threads.")
    return {name: str(threads) for name in THREAD_VARIABLES}


def parse_devices(devices: Union[str, Sequence[str], None]) -> List[str]:
    """``"cuda:0,cuda:1"`` or ``["cuda:0", "cuda:1"]`` -> ``["cuda:0", "cuda:1"]``; ``cpu`` is a device
    too. Each item is checked by :func:`.prepare.device_settings`, the one parser of device names."""
    if devices is None:
        return []
    items = devices.split(",") if isinstance(devices, str) else [p for d in devices for p in str(d).split(",")]
    out = [item.strip() for item in items if item.strip()]
    for item in out:
        try:
            device_settings(item)
        except ConfigError:
            raise ConfigError(f"--devices {item!r}: expected cpu or cuda:N (e.g. cuda:0,cuda:1).") from None
    if not out:
        raise ConfigError("--devices: the list of devices is empty; give e.g. cuda:0,cuda:1.")
    return out


def make_slots(jobs: Optional[int] = None, devices: Union[str, Sequence[str], None] = None,
               threads: Optional[int] = None) -> List[Slot]:
    """``jobs`` slots (default: one per device, else 1). With several slots each gets
    ``threads // jobs`` threads (``threads`` default: :func:`thread_budget`, at least 1); devices are
    dealt round robin, so ``--jobs 4 --devices cuda:0,cuda:1`` puts two runs on each GPU."""
    names = parse_devices(devices)
    if jobs is None:
        jobs = len(names) or 1
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs {jobs!r}: expected a positive number of runs at once.")
    shared = RunningProcesses()
    if jobs == 1 and not names:
        return [Slot(0, "", running=shared)]
    each = max(1, (threads or thread_budget()) // jobs)
    slots = []
    for index in range(jobs):
        env = thread_env(each) if jobs > 1 else {}
        device = names[index % len(names)] if names else None
        label = f"job {index + 1}/{jobs}" + (f" {device}" if device else f", {each} thread{'s' * (each > 1)}")
        slots.append(Slot(index, label, env, device_settings(device) if device else {}, shared))
    return slots


def run_threads(targets: Sequence[Callable[[], None]], on_interrupt: Callable[[], None], name: str) -> None:
    """Run each target in its own thread and wait until all have ended. On an interrupt while
    waiting (Ctrl-C, or SIGTERM): ``on_interrupt()`` (kill the runs), wait for the threads to end,
    re-raise. The wait is on Events, not ``Thread.join``: a join interrupted by Ctrl-C can leave
    CPython (3.11) believing a running thread has ended, and the caller would return too early."""
    done = [threading.Event() for _ in targets]

    def wrapped(target: Callable[[], None], event: threading.Event) -> None:
        try:
            target()
        finally:
            event.set()

    threads = [threading.Thread(target=wrapped, args=(target, event), name=f"{name}-{index}", daemon=True)
               for index, (target, event) in enumerate(zip(targets, done))]
    with sigterm_as_interrupt():
        for thread in threads:
            thread.start()
        try:
            for event in done:
                while not event.wait(0.2):
                    pass
        except KeyboardInterrupt:
            on_interrupt()
            for event in done:
                while not event.wait(0.2):
                    pass
            raise
