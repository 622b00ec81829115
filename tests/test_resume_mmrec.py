"""A run killed mid-way and resumed ends exactly like one that was never interrupted, in the real
MMRec (its own quick_start, Trainer, loaders and evaluator), for REARM and for MMRec's LightGCN.

Each model is trained three times with `mmrec-rearm run` as a user types it, in its own process:
once straight through; once killed with SIGKILL (the whole process group: the command and its
runner) as soon as the training state of epoch 0 is on disk; and once more with the same command,
which continues from that state. The final metric dicts, the per-epoch history and (REARM) the
best-epoch weights must be bit-identical. One thread: with several, the CPU's sparse products sum
in a varying order and two uninterrupted runs already differ in the last bits.

Skipped (with the reason and how to enable) without a real MMRec checkout and an interpreter that
can run it; see `real_mmrec_runner_or_skip` in conftest.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, real_mmrec_runner_or_skip

EPOCHS = 3
MODELS = {"REARM": [], "LightGCN": ["--set", "n_layers=2", "reg_weight=1e-3"]}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    src, python = real_mmrec_runner_or_skip("REAL-MMREC RESUME TEST")
    from mmrec_rearm.install import install
    from mmrec_rearm.synth import make_demo_dataset

    root = tmp_path_factory.mktemp("resume") / "MMRec"
    shutil.copytree(src, root / "src", ignore=shutil.ignore_patterns("log", "__pycache__", "saved"))
    install(root, report=None)
    make_demo_dataset(root / "data", "demo", n_users=120, n_items=80, seed=0)
    return root, python


def _command(root: Path, python: str, model: str, results: Path) -> list:
    return [python, "-m", "mmrec_rearm.cli", "run", "--mmrec", str(root), "-d", "demo", "-m", model,
            "--epochs", str(EPOCHS), "--device", "cpu", "--results", str(results), *MODELS[model]]


def _env() -> dict:
    path = os.pathsep.join(p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=path)


def _record(results: Path) -> dict:
    (line,) = (results / "demo" / "runs.jsonl").read_text().splitlines()
    return json.loads(line)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_killed_and_resumed_run_ends_exactly_like_an_uninterrupted_one(checkout, tmp_path, model):
    root, python = checkout
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    done = subprocess.run(_command(root, python, model, straight), env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "epoch   2/3 " in done.stdout
    if model == "REARM":                                 # the epoch line names every loss term
        assert " bpr " in done.stdout and " cl " in done.stdout and " ort " in done.stdout and " reg " in done.stdout

    # the same run, killed (SIGKILL to the command and its runner) once epoch 0's state is saved
    process = subprocess.Popen(_command(root, python, model, broken), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    states = broken / "demo" / "state"
    deadline = time.time() + 600
    while not list(states.glob("*.pt")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    (saved,) = states.glob("*.pt")
    payload = torch.load(saved, map_location="cpu", weights_only=True)
    assert payload["epoch"] < EPOCHS - 1 and not payload["finished"]    # killed mid-way
    assert not (broken / "demo" / "runs.jsonl").exists()                # no record of the killed run

    resumed = subprocess.run(_command(root, python, model, broken), env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming after epoch {payload['epoch']} from {saved}" in resumed.stdout
    assert f"epoch   {payload['epoch']}/3 " not in resumed.stdout       # finished epochs are not trained again

    a, b = _record(straight), _record(broken)
    assert b["status"] == "ok" and b["resumed_from"] == payload["epoch"]
    assert a["valid"] == b["valid"] and a["test"] == b["test"]          # bitwise-equal metric dicts
    assert a["best_epoch"] == b["best_epoch"] and a["epochs_run"] == b["epochs_run"] == EPOCHS
    keep = ("epoch", "loss", "losses", "valid_score")
    assert [{k: h[k] for k in keep} for h in a["history"]] == [{k: h[k] for k in keep} for h in b["history"]]
    assert not list(states.glob("*.pt"))                                 # a finished run leaves no state
    if model == "REARM":                                                 # best-epoch weights, bit for bit
        first = torch.load(a["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
        second = torch.load(b["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
