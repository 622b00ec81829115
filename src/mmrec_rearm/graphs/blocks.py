"""Running a graph builder's blocks (on threads where that pays) with progress messages.

Only the standard library is imported here.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

__all__ = ["Progress", "BLOCK_BYTES", "worker_count", "reporter", "run_blocks"]

Progress = Optional[Callable[[str], None]]

#: Budget (bytes) of one dense similarity block (n x block columns, float32).
BLOCK_BYTES = 64 << 20


def worker_count() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))



def reporter(progress: Progress, label: str, n_blocks: int) -> Callable[[int], None]:
    """Calls ``progress`` for about 20 of the ``n_blocks`` blocks (and the last one)."""
    step = max(1, n_blocks // 20)

    def report(done: int) -> None:
        if progress is not None and (done % step == 0 or done == n_blocks):
            progress(f"{label}: block {done}/{n_blocks}")
    return report


def run_blocks(tasks: Sequence, produce: Callable, consume: Callable, *,
                produce_in_workers: bool, report: Callable[[int], None]) -> list:
    """``[consume(task, produce(task)) for task in tasks]``, results in the order of ``tasks``.

    With ``produce_in_workers`` (sparse products and numpy reductions, which release the GIL)
    the tasks run on a few threads. Otherwise ``produce`` calls multi-threaded BLAS and everything
    runs here, one task after the other: overlapping the reductions with BLAS oversubscribed the
    cores (OpenBLAS threads spin while waiting) and was slower on the reference box.
    """
    workers = worker_count() if produce_in_workers else 1
    if workers == 1 or len(tasks) == 1:
        out = []
        for i, task in enumerate(tasks):
            out.append(consume(task, produce(task)))
            report(i + 1)
        return out
    results = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(lambda t=task: consume(t, produce(t))) for task in tasks]
        for i, fut in enumerate(futures):
            results.append(fut.result())
            report(i + 1)
    return results
