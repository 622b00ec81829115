"""How the graph build grows with the data: time and peak RSS per graph from 20k to 1M users.

    python bench/scale.py [--sizes 20000 100000 300000 1000000] [--dims 384 4096]
                          [--out bench/results/scale.md] [--json bench/results/scale.json]
                          [--work DIR] [--memory-limit-gb 12] [--replot]

Data: ``synth.power_law_interactions`` (seeded, long-tail users and items, 5-core) with
``n_items = n_users / 10`` (MicroLens-1M has 1M users and 91k items) and about 9 interactions per
user, all of them training interactions; one seeded float32 feature matrix ``(n_items, d)``
uniform in [0, 1) like bench/graphs.py (timing only, never quality). Parameters: the default
``GraphParams`` (REARM's Baby settings) with that single modality, so both the user interest and
the item semantic graph use it.

Each case (size x width) runs in fresh processes, one at a time, in ascending size:

* **cold**: ``cache.load_or_build`` into an empty cache folder (fingerprint, build, store);
* **cache**: a second process asks for the same graphs (a cache hit).

Per graph: wall and CPU seconds and the peak RSS while it was built (the kernel's high-water
mark, reset at the start of each graph through ``/proc/self/clear_refs``; data and earlier
graphs included, nothing subtracted). Whole build: wall and CPU seconds, peak RSS of the process.
The parent stops a child whose RSS passes ``--memory-limit-gb`` (other jobs share the machine)
and records that. Every case is merged into the JSON as soon as it ends (``--sizes`` / ``--dims``
pick cases, so a long series can be run piecewise); the report, the plot and the growth
exponents (least-squares slope of log time / log memory against log interactions) are redrawn
from the whole JSON each time (``--replot`` only redraws; bench/scale_report.py writes them).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from machine import machine  # bench/ is the script's folder
from scale_report import GRAPHS, write_report

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "scale.md"
DEFAULT_JSON = REPO / "bench" / "results" / "scale.json"
SIZES = (20_000, 100_000, 300_000, 1_000_000)
DIMS = (384, 4096)
ITEMS_PER_USER = 0.1
PER_USER = 9.5  # Pareto mean of the draws; merging repeats and the 5-core filter leave about 9
SEED = 0


# --------------------------------------------------------------------------------------------
# In the child process


def _hwm_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # Linux: reset the peak RSS to the current RSS


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Phases:
    """Wall, CPU and peak RSS of each graph, by wrapping the builders that build_graphs calls."""

    def __init__(self) -> None:
        self.stats: Dict[str, dict] = {}
        self.peak_kib = 0

    def wrap(self, module, attr: str, name) -> None:
        real = getattr(module, attr)

        def wrapped(*args, **kwargs):
            label = name(args, kwargs) if callable(name) else name
            self.peak_kib = max(self.peak_kib, _hwm_kib())
            _reset_hwm()
            start_rss, t0, c0 = _rss_kib(), time.perf_counter(), _cpu()
            try:
                return real(*args, **kwargs)
            finally:
                peak = _hwm_kib()
                self.peak_kib = max(self.peak_kib, peak)
                s = self.stats.setdefault(label, {"wall_s": 0.0, "cpu_s": 0.0, "peak_gib": 0.0,
                                                  "start_gib": start_rss / 2 ** 20})
                s["wall_s"] += time.perf_counter() - t0
                s["cpu_s"] += _cpu() - c0
                s["peak_gib"] = max(s["peak_gib"], peak / 2 ** 20)

        setattr(module, attr, wrapped)

    def install(self) -> None:
        from mmrec_rearm.graphs import build, cooccurrence, interest, knn

        self.wrap(cooccurrence, "cooccurrence_topk", lambda a, kw: f"{kw.get('side', 'user')}_cooccurrence")
        self.wrap(interest, "user_knn_from_features", "user_interest")
        self.wrap(interest, "user_knn_from_gram", "user_interest")
        self.wrap(knn, "gram_matrix", "user_interest")  # the shared item Gram counts there, as in build_graphs
        self.wrap(knn, "item_knn_from_features", "item_semantic")
        self.wrap(knn, "item_knn_from_gram", "item_semantic")
        self.wrap(build, "fuse_graphs", "fusion")


class _StopSampling(Exception):
    pass


def _sample_user_tiles(fraction: float, info: dict) -> None:
    """Benchmark-only: time the user interest graph's square tiles on the first rows of tiles.

    The tiled driver is run until it starts the row of tiles after the first ``fraction`` of them;
    the wall and CPU seconds of those rows, scaled by (all tile pairs) / (tile pairs done), stand
    for the whole graph (every tile pair costs the same GEMM; the selection gets cheaper as the
    per-node floors rise, so this errs on the slow side). The graph returned has ``kk`` made-up
    neighbours per node, so that assembly, fusion and the cache handle graphs of the real size.
    """
    import numpy as np

    from mmrec_rearm.graphs import knn, tiles

    real = tiles.symmetric_topk

    def sampled(n, kk, zero, vectors, *, tile=tiles.TILE_SIZE, label="knn", progress=None):
        if not label.startswith("user_interest"):
            return real(n, kk, zero, vectors, tile=tile, label=label, progress=progress)
        bounds = tiles.tile_bounds(n, tile)
        stop_row = max(1, math.ceil(fraction * len(bounds)))
        state = {"rows": 0, "left": 0}  # rows started; calls left in the current row

        def counting(s, e):
            # the driver asks for row p's own tile, then for every later tile q > p
            if state["left"] == 0:
                if state["rows"] == stop_row:
                    raise _StopSampling
                state["left"] = len(bounds) - 1 - state["rows"]
                state["rows"] += 1
            else:
                state["left"] -= 1
            return vectors(s, e)

        t0, c0 = time.perf_counter(), _cpu()
        try:
            real(n, kk, zero, counting, tile=tile, label=label, progress=progress)
            done = len(bounds)
        except _StopSampling:
            done = stop_row
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
        total_pairs = len(bounds) * (len(bounds) + 1) / 2
        pairs = sum(len(bounds) - p for p in range(done))
        info.update(tile_rows=len(bounds), rows_done=done, pairs_done=pairs, pairs_total=total_pairs,
                    sampled_wall_s=wall, sampled_cpu_s=cpu, scale=total_pairs / pairs)
        out = []
        for s, e in bounds:
            node = np.repeat(np.arange(s, e, dtype=np.int64), kk)
            neighbour = (node + np.tile(np.arange(1, kk + 1, dtype=np.int64), e - s)) % n
            out.append((node, neighbour, np.full(node.size, 0.5, dtype=np.float32)))
        return out

    tiles.symmetric_topk = sampled
    knn.symmetric_topk = sampled  # knn imported the name


def _load(work: Path, dim: int, seed: int):
    import numpy as np

    from mmrec_rearm.data import TrainingData, training_matrix

    z = np.load(work / "interactions.npz")
    n_users, n_items = int(z["n_users"]), int(z["n_items"])
    matrix = training_matrix(z["users"], z["items"], n_users, n_items)
    features = {"features": np.random.default_rng(seed + dim).random((n_items, dim), dtype=np.float32)}
    return TrainingData(n_users=n_users, n_items=n_items, interactions=matrix, features=features, source={})


def _child(mode: str, work: Path, dim: int, seed: int, record: Path, sample: Optional[float] = None) -> None:
    import numpy as np

    from mmrec_rearm import cache
    from mmrec_rearm.graphs import GraphParams

    t0, c0 = time.perf_counter(), _cpu()
    data = _load(work, dim, seed)
    load = {"wall_s": time.perf_counter() - t0, "cpu_s": _cpu() - c0, "rss_gib": _rss_kib() / 2 ** 20}
    phases = _Phases()
    sampling: dict = {}
    if mode == "cold":
        phases.install()
        if sample:
            _sample_user_tiles(sample, sampling)
    log: List[str] = []
    started = time.perf_counter()

    def progress(msg: str) -> None:
        log.append(f"{time.perf_counter() - started:9.2f}s {msg}")

    params = GraphParams()
    t0, c0 = time.perf_counter(), _cpu()
    graphs, hit = cache.load_or_build(data, params, cache_dir=work / "cache", progress=progress)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    phases.peak_kib = max(phases.peak_kib, _hwm_kib())
    degrees = np.diff(data.interactions.tocsc().indptr).astype(np.float64)
    out = {
        "mode": mode, "hit": bool(hit), "wall_s": wall, "cpu_s": cpu,
        "peak_gib": max(phases.peak_kib, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 2 ** 20,
        "load": load, "graphs": phases.stats,
        "seconds": {k: float(v) for k, v in graphs.seconds.items()},
        "edges": {g: int(getattr(graphs, g).nnz) for g in graphs.GRAPH_NAMES},
        "n_users": int(data.n_users), "n_items": int(data.n_items), "nnz": int(data.interactions.nnz),
        "item_degree_sq": float((degrees ** 2).sum()),
        "user_degree_sq": float((np.diff(data.interactions.indptr).astype(np.float64) ** 2).sum()),
        "dim": dim, "routes": [m.split("s ", 1)[1] for m in log if "route" in m or "tiles" in m or "blocks of" in m],
        "log_tail": log[-12:],
    }
    if sampling:
        # the user interest graph's time is extrapolated from its sampled tiles
        out["user_interest_sampled"] = sampling
        g = out["graphs"]["user_interest"]
        extra_wall = sampling["sampled_wall_s"] * (sampling["scale"] - 1)
        extra_cpu = sampling["sampled_cpu_s"] * (sampling["scale"] - 1)
        g["wall_s"] += extra_wall
        g["cpu_s"] += extra_cpu
        out["wall_s"] += extra_wall
        out["cpu_s"] += extra_cpu
        out["seconds"]["user_interest"] += extra_wall
    record.write_text(json.dumps(out, indent=1))


def _prepare(n_users: int, work: Path, seed: int) -> dict:
    import numpy as np

    from mmrec_rearm.synth import power_law_interactions

    t0 = time.perf_counter()
    users, items, nu, ni = power_law_interactions(n_users, int(n_users * ITEMS_PER_USER), per_user=PER_USER,
                                                  seed=seed)
    np.savez(work / "interactions.npz", users=users, items=items, n_users=nu, n_items=ni)
    return {"n_users": nu, "n_items": ni, "nnz": int(users.size), "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------
# In the parent


def _load_average() -> List[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def _run_child(args: List[str], limit_gib: float) -> dict:
    """Run a child, stopping it if its RSS passes ``limit_gib``; -> status fields."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())] + args)
    stopped = None
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            rss = 0
        if rss / 2 ** 20 > limit_gib:
            stopped = f"stopped: RSS {rss / 2 ** 20:.1f} GiB passed the {limit_gib:g} GiB limit"
            proc.kill()
            proc.wait()
            break
        time.sleep(0.5)
    return {"returncode": proc.returncode, "stopped": stopped}


def run_case(n_users: int, dims: List[int], work_root: Path, seed: int, limit_gib: float,
             sample: Optional[float] = None) -> Iterator[dict]:
    """Yields one record per width as soon as it is measured."""
    work = Path(tempfile.mkdtemp(prefix=f"scale-{n_users}-", dir=work_root))
    try:
        print(f"[scale] {n_users:,} users: generating interactions ...", flush=True)
        data = _prepare(n_users, work, seed)
        print(f"[scale]   {data['n_users']:,} users x {data['n_items']:,} items, {data['nnz']:,} interactions "
              f"({data['seconds']:.1f} s)", flush=True)
        for dim in dims:
            case = {"users_asked": n_users, "dim": dim, "date": time.strftime("%Y-%m-%d %H:%M"),
                    "load_before": _load_average()}
            shutil.rmtree(work / "cache", ignore_errors=True)
            for mode in ("cold", "cache"):
                record = work / f"{mode}.json"
                print(f"[scale] {n_users:,} users, {dim}-d: {mode} run ...", flush=True)
                status = _run_child(["--child", mode, "--work", str(work), "--dim", str(dim), "--seed", str(seed),
                                     "--record", str(record)] + (["--sample", str(sample)] if sample else []),
                                    limit_gib)
                if status["returncode"] != 0 or not record.exists():
                    case[mode] = {"failed": status["stopped"] or f"exit code {status['returncode']}"}
                    print(f"[scale]   {mode}: {case[mode]['failed']}", flush=True)
                    break
                case[mode] = json.loads(record.read_text())
                record.unlink()
                r = case[mode]
                print(f"[scale]   {mode}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, peak RSS "
                      f"{r['peak_gib']:.2f} GiB" + (", hit" if r["hit"] else ""), flush=True)
            case["load_after"] = _load_average()
            yield case
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--work", type=Path, default=None, help="folder for the data and caches (default: temp)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--memory-limit-gb", type=float, default=12.0)
    ap.add_argument("--replot", action="store_true", help="only redraw the report from the JSON")
    ap.add_argument("--sample", type=float, default=None, metavar="FRACTION",
                    help="time the user interest graph on this fraction of its rows of square tiles and "
                         "extrapolate (everything else is measured in full); for cases too long to run whole")
    ap.add_argument("--child", choices=("cold", "cache"), help=argparse.SUPPRESS)
    ap.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.work, args.dim, args.seed, args.record, args.sample)
        return 0
    results = json.loads(args.json.read_text()) if args.json.exists() else {"cases": []}
    if not args.replot:
        work_root = args.work or Path(tempfile.gettempdir())
        work_root.mkdir(parents=True, exist_ok=True)
        for n_users in sorted(args.sizes):
            for case in run_case(n_users, args.dims, work_root, args.seed, args.memory_limit_gb, args.sample):
                results["cases"] = [c for c in results["cases"]
                                    if (c["users_asked"], c["dim"]) != (case["users_asked"], case["dim"])] + [case]
                results["cases"].sort(key=lambda c: (c["dim"], c["users_asked"]))
                results["machine"] = machine()
                results["settings"] = {"items_per_user": ITEMS_PER_USER, "per_user_draws": PER_USER, "seed": args.seed,
                                       "params": "GraphParams() defaults, one modality"}
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=1))
                write_report(results, args.out)
    write_report(results, args.out)
    print(f"[scale] wrote {args.json} and {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
