"""Parallel runs (``--jobs K`` / ``--devices``): slots, the parallel run queue against the fake MMRec
through real runner subprocesses, its resume and crash-stop semantics, and one optional check that
parallel and sequential runs of the real MMRec give the same metrics.
"""
from __future__ import annotations

import shutil
import threading
import time

import pytest
from conftest import real_mmrec_runner_or_skip
from test_experiments import FAKE_UTILS, MODEL_A, MODEL_B, make_fake_mmrec

from mmrec_rearm.errors import ConfigError, RunsAbortedError
from mmrec_rearm.experiments import compare
from mmrec_rearm.experiments.mmrec_config import mmrec_src
from mmrec_rearm.experiments.parallel import THREAD_VARIABLES, make_slots, parse_devices, thread_budget
from mmrec_rearm.experiments.plan import build_plan
from mmrec_rearm.experiments.store import RunStore

#: fields of a record that depend on when and where it ran, not on what it computed
VOLATILE = {"wall_s", "started", "finished", "log_path", "mmrec_log", "host", "python"}
#: the same inside each epoch of the record's history: how long its training and evaluation took
VOLATILE_PER_EPOCH = {"train_s", "eval_s"}


def _stable(records):
    def stable(record):
        out = {k: v for k, v in record.items() if k not in VOLATILE}
        if "history" in out:
            out["history"] = [{k: v for k, v in epoch.items() if k not in VOLATILE_PER_EPOCH} for epoch in out["history"]]
        return out
    return sorted((stable(r) for r in records), key=lambda r: r["key"])


def test_slots_split_threads_and_deal_devices():
    assert [(s.label, s.env, s.config) for s in make_slots()] == [("", {}, {})]   # sequential: nothing changes
    two = make_slots(2, threads=8)
    assert [s.env for s in two] == [{name: "4" for name in THREAD_VARIABLES}] * 2
    assert all(s.config == {} for s in two) and two[0].running is two[1].running
    assert make_slots(3, threads=2)[0].env["OMP_NUM_THREADS"] == "1"              # never below one thread
    gpus = make_slots(devices="cuda:0,cuda:1", threads=16)
    assert [s.config for s in gpus] == [{"use_gpu": True, "gpu_id": 0}, {"use_gpu": True, "gpu_id": 1}]
    assert gpus[1].env["OMP_NUM_THREADS"] == "8" and "cuda:1" in gpus[1].label
    four = make_slots(4, ["cuda:0", "cuda:1"], threads=16)
    assert [s.config["gpu_id"] for s in four] == [0, 1, 0, 1]
    assert make_slots(devices="cpu")[0].config == {"use_gpu": False}
    assert thread_budget({"OMP_NUM_THREADS": "6"}) == 6 and thread_budget({"OMP_NUM_THREADS": "x"}) >= 1


@pytest.mark.parametrize("jobs, devices, message", [
    (0, None, "--jobs 0: expected a positive number"),
    (None, "gpu0", "--devices 'gpu0': expected cpu or cuda:N"),
    (None, ",", "the list of devices is empty"),
])
def test_slot_errors_name_the_option(jobs, devices, message):
    with pytest.raises(ConfigError, match=message):
        make_slots(jobs, devices)
    assert parse_devices(["cuda:0,cuda:2", "cpu"]) == ["cuda:0", "cuda:2", "cpu"]


def test_parallel_compare_through_the_runner_matches_sequential(tmp_path, monkeypatch):
    monkeypatch.setattr("mmrec_rearm.experiments.parallel.START_SPACING_S", 0.0)  # the fake MMRec logs per model
    # every run logs the thread count its subprocess was given into MMRec's log
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A, "B": MODEL_B})
    utils = mmrec_src(root) / "utils" / "utils.py"
    utils.write_text(FAKE_UTILS.replace(
        "        log = logging.getLogger()\n",
        "        log = logging.getLogger()\n        import os\n"
        "        log.info('threads %s' % os.environ.get('OMP_NUM_THREADS'))\n", 1))
    args = dict(seeds=2, epochs=3, progress=None, target="A")
    compare(root, "toy", ["A", "B"], results_dir=tmp_path / "seq", **args)
    lines = []
    report = compare(root, "toy", ["A", "B"], results_dir=tmp_path / "par", jobs=2, **dict(args, progress=lines.append))
    assert (report.executed, report.failed) == (12, 0)
    sequential = RunStore(tmp_path / "seq", "toy").read()[0]
    parallel = RunStore(tmp_path / "par", "toy").read()[0]
    assert _stable(parallel) == _stable(sequential)
    assert report.summaries["A"].selected.config == {"v": 0.3, "t": 0.1}
    assert any("[job 2/2" in line for line in lines) and any(line.startswith("[A seed") for line in lines)
    logs = "".join(open(r["log_path"]).read() for r in parallel)
    assert f"threads {max(1, thread_budget() // 2)}" in logs


def _ok(spec, metric=0.2):
    return {"status": "ok", "valid": {"recall@20": metric}, "test": {"recall@20": metric}, "best_epoch": 0,
            "wall_s": 0.01}


def test_parallel_runs_get_their_own_device(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A})
    seen, lock = [], threading.Lock()

    def run(spec, extra, on_event):
        with lock:
            seen.append(extra.get("gpu_id"))
        time.sleep(0.05)
        return _ok(spec)

    compare(root, "toy", ["A"], seeds=2, run_fn=run, devices="cuda:0,cuda:1", results_dir=tmp_path / "r",
            progress=None, target="")
    assert len(seen) == 8 and set(seen) == {0, 1}


def test_parallel_interruption_records_only_finished_runs_and_resume_completes(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A})
    plan = build_plan(mmrec_src(root), "toy", ["A"], 3, None)
    calls, lock = [], threading.Lock()

    def run(spec, extra, on_event):
        with lock:
            calls.append(spec.key)
            number = len(calls)
        if number == 4:
            raise KeyboardInterrupt
        time.sleep(0.02)
        return _ok(spec)

    with pytest.raises(KeyboardInterrupt):
        compare(root, "toy", ["A"], seeds=3, run_fn=run, jobs=2, results_dir=tmp_path / "r", progress=None)
    stored = RunStore(tmp_path / "r", "toy").read()[0]
    assert plan.runs[3].key not in {r["key"] for r in stored}   # the interrupted run has no record
    assert len(stored) <= 4 and all(r["status"] == "ok" for r in stored)
    again = []
    report = compare(root, "toy", ["A"], seeds=3, run_fn=lambda s, e, o: again.append(s.key) or _ok(s), jobs=2,
                     results_dir=tmp_path / "r", progress=None)
    assert sorted(again) == sorted(r.key for r in plan.runs if r.key not in {x["key"] for x in stored})
    assert report.skipped == len(stored) and len(RunStore(tmp_path / "r", "toy").latest()) == 12


def test_parallel_sweep_stops_after_three_identical_crashes(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A})
    calls, lock = [], threading.Lock()

    def run(spec, extra, on_event):
        with lock:
            calls.append(spec.key)
        time.sleep(0.02)
        return {"status": "failed", "wall_s": 0.0, "message": f"FileNotFoundError: 'logs/A-{spec.key}.json'",
                "error": "Traceback ...", "log_path": f"/x/{spec.key}.log"}

    with pytest.raises(RunsAbortedError, match="[34] runs in a row failed with the same error.*were not started"):
        compare(root, "toy", ["A"], seeds=3, run_fn=run, jobs=2, results_dir=tmp_path / "r", progress=None)
    assert 3 <= len(calls) <= 4                      # of 12: at most the one in flight finishes after the third
    assert len(RunStore(tmp_path / "r", "toy").read()[0]) == len(calls)


def test_real_mmrec_parallel_runs_give_the_sequential_metrics(tmp_path):
    checkout_src, mmrec_python = real_mmrec_runner_or_skip("REAL-MMREC PARALLEL TEST")
    from mmrec_rearm.synth import make_demo_dataset

    clone = tmp_path / "MMRec"
    shutil.copytree(checkout_src, clone / "src", ignore=shutil.ignore_patterns("log", "__pycache__", "saved"))
    make_demo_dataset(clone / "data", "demo", n_users=120, n_items=80, seed=0)
    args = dict(seeds=1, epochs=2, python=mmrec_python, progress=None, timeout_s=240, target=None,
                overrides=["LightGCN.n_layers=1", "LightGCN.reg_weight=[1e-2, 1e-4]", "use_gpu=False"])
    compare(clone, "demo", ["LightGCN"], results_dir=tmp_path / "seq", **args)
    compare(clone, "demo", ["LightGCN"], results_dir=tmp_path / "par", jobs=2, **args)
    sequential = {r["key"]: r for r in RunStore(tmp_path / "seq", "demo").read()[0]}
    parallel = {r["key"]: r for r in RunStore(tmp_path / "par", "demo").read()[0]}
    assert len(sequential) == 2 and sequential.keys() == parallel.keys()
    for key, record in sequential.items():
        assert record["status"] == "ok" and parallel[key]["status"] == "ok", parallel[key].get("message")
        assert (parallel[key]["valid"], parallel[key]["test"]) == (record["valid"], record["test"])
        assert [h["valid_score"] for h in parallel[key]["history"]] == [h["valid_score"] for h in record["history"]]


def test_parallel_starts_are_a_second_apart_for_mmrecs_log_names(monkeypatch):
    from mmrec_rearm.experiments import parallel

    monkeypatch.setattr(parallel, "START_SPACING_S", 0.2)
    pool = parallel.RunningProcesses()
    began = time.monotonic()
    pool.space_start()                    # the first start does not wait
    assert time.monotonic() - began < 0.1
    pool.space_start()
    assert time.monotonic() - began >= 0.2
