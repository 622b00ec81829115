"""The description of the measuring machine that every benchmark report prints (CPU, cores, memory,
OS, versions); the benchmarks import it from their own folder."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Dict


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2 ** 20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "?"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use
    except AttributeError:  # not on Linux
        return os.cpu_count() or 0


def machine() -> Dict[str, str]:
    """cpu, cores, memory, os, python, numpy and scipy versions (strings)."""
    import numpy as np
    import scipy

    return {"cpu": _cpu_model(), "cores": str(_cores()), "memory": _memory(), "os": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__}
