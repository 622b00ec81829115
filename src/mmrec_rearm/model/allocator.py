"""Host memory allocator tuning for a model that trains on the CPU (glibc only; elsewhere a no-op).

Two process-wide settings, both from the C library through :mod:`ctypes`:

* :func:`use_mmap_for_blocks_from` lowers glibc's mmap threshold so that each large activation or
  gradient block of a training step is its own mapping, returned to the OS when freed;
* :func:`return_free_heap_to_os` hands freed heap pages back (``malloc_trim``), e.g. after the graph
  build.

Why and what it costs: docs/choices.md ("allocator"). Neither imports MMRec.
"""
from __future__ import annotations

import ctypes
import sys

import torch

__all__ = ["use_mmap_for_blocks_from", "return_free_heap_to_os", "tune_host_allocator"]

#: mallopt's parameter number for M_MMAP_THRESHOLD (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3


def use_mmap_for_blocks_from(megabytes: float) -> bool:
    """Make glibc serve every allocation of at least ``megabytes`` MB by its own mmap (``mallopt(
    M_MMAP_THRESHOLD)``), so it is returned to the OS as soon as it is freed. -> whether it applied.

    Why: each training step allocates and frees many activation and gradient blocks of a few MB;
    glibc's default threshold grows to 32 MB after the first such free, after which these blocks
    are carved from the heap and the heap's high-water mark stays in the process's memory. The
    setting is process-wide and lasts for the process (MMRec runs one model per process); the
    cost is fresh zeroed pages per block (measurements: docs/choices.md, "allocator")."""
    if megabytes <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, int(megabytes * (1 << 20))))
    except (OSError, AttributeError):  # not glibc
        return False


def return_free_heap_to_os() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``; elsewhere a no-op).

    Building the graphs frees blocks below glibc's mmap threshold (the item Gram matrix, kNN
    candidates); glibc keeps those in the heap, where they would count in the process's memory for
    the whole run."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl or another libc without malloc_trim
        pass


def tune_host_allocator(device: torch.device, mmap_threshold_mb: float) -> bool:
    """:func:`use_mmap_for_blocks_from` for a model that trains on the CPU only: a GPU model's step
    blocks are device memory, which the host allocator never sees. -> whether the threshold applied."""
    return device.type == "cpu" and use_mmap_for_blocks_from(mmap_threshold_mb)
