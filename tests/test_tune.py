"""tune (Optuna) and compare --from-tune: the search space, validation-only selection with adversarial
test values, pruning, the records in the results store, two worker processes on one embedded
study, and the winners in compare. Needs optuna (the test extra installs it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import FAKE_UTILS, make_fake_mmrec

try:
    import optuna
except ImportError:  # pragma: no cover - the test extra installs optuna
    optuna = None
    pytestmark = pytest.mark.skip(reason="TUNE TESTS SKIPPED: optuna is not installed; "
                                         "pip install -e '.[test]' (or 'mmrec-rearm[tune]') to enable them")

from mmrec_rearm.cli import main
from mmrec_rearm.errors import ConfigError
from mmrec_rearm.experiments import compare
from mmrec_rearm.experiments.mmrec_config import mmrec_src
from mmrec_rearm.experiments.plan import RunSpec, build_plan
from mmrec_rearm.experiments.store import RunStore

SRC = Path(__file__).resolve().parents[1] / "src"

# The shared fake trainer (conftest: per-epoch validation follows config['curve'], at most
# config['epochs'] epochs, MMRec's fit shape and the hooks the runner reports progress from) with two
# changes: it sleeps config['pause'] s per epoch (or $TUNE_TEST_PAUSE_S s when set: a rerun can go
# fast with the study's settings unchanged), and its TEST values are adversarial: test = 1 - best
# validation, so choosing on test picks the worst.
TUNE_UTILS = FAKE_UTILS + '''
import os
import time


class TuneTrainer(Trainer):
    def _train_epoch(self, train_data, epoch_idx, loss_func=None):
        time.sleep(float(os.environ.get("TUNE_TEST_PAUSE_S", self.config.get("pause", 0))))
        return super()._train_epoch(train_data, epoch_idx, loss_func)

    def fit(self, *args, **kwargs):
        best, _, _ = super().fit(*args, **kwargs)
        return best, {"recall@20": best, "ndcg@20": best / 2}, {"recall@20": 1 - best, "ndcg@20": (1 - best) / 2}


def get_trainer():
    return TuneTrainer
'''

GOOD = [0.30, 0.40, 0.50, 0.60]
CURVES = [GOOD, [0.05, 0.05, 0.05, 0.05], [0.04, 0.03, 0.03, 0.02], [0.10, 0.11, 0.12, 0.13],
          [0.02, 0.02, 0.02, 0.02], [0.20, 0.20, 0.21, 0.21]]
MODEL_T = f"curve: {json.dumps(CURVES)}\nlr: [0.1, 0.01]\nhyper_parameters: [\"curve\", \"lr\"]\n"
MODEL_U = "curve: [[0.2, 0.3, 0.4, 0.5]]\nwidth: 8\nhyper_parameters: []\n"


def fake_mmrec(tmp_path: Path) -> Path:
    root = make_fake_mmrec(tmp_path / "mmrec", {"T": MODEL_T, "U": MODEL_U})
    (mmrec_src(root) / "utils" / "utils.py").write_text(TUNE_UTILS)
    return root


def curve_run(calls, lock=None):
    """In-process stand-in for a run: the epochs of config['curve'] as events, then the result
    (valid = best epoch, test adversarial). A pruned trial's on_event raises and ends it."""
    lock = lock or threading.Lock()

    def run(spec, extra, on_event):
        with lock:
            calls.append(spec)
        curve = spec.config["curve"][: spec.epochs or 1000]
        history = []
        for epoch, score in enumerate(curve):
            history.append({"epoch": epoch, "valid_score": score})
            on_event({"event": "epoch", "epoch": epoch, "valid_score": score, "loss": 1.0})
        best = max(curve)
        return {"status": "ok", "valid": {"recall@20": best}, "test": {"recall@20": 1 - best},
                "best_epoch": curve.index(best), "history": history, "wall_s": 0.01}
    return run


def _tune(root, tmp_path, trials, run_fn=None, model="T", **kwargs):
    from mmrec_rearm.experiments.tune import tune

    args = {**dict(epochs=4, results_dir=tmp_path / "results", progress=None, startup_trials=2, sampler_seed=0),
            **kwargs}
    return tune(root, "toy", model, trials, run_fn=run_fn, **args)


# ------------------------------------------------------------------------------------------------
# the search space


def test_space_from_the_mmrec_grid_and_set_pins(tmp_path):
    from mmrec_rearm.experiments.tune_space import build_space

    src = mmrec_src(fake_mmrec(tmp_path))
    space = build_space(src, "T", "toy")
    assert list(space.params) == ["curve", "lr"]
    assert space.params["curve"].choices == tuple(CURVES) and space.params["lr"].choices == (0.1, 0.01)
    pinned = build_space(src, "T", "toy", overrides=["T.lr=0.01", "T.curve=[[0.1], [0.2]]"])
    assert list(pinned.params) == ["curve"] and pinned.params["curve"].choices == ([0.1], [0.2])
    # a sample becomes exactly the configuration compare plans for the same values
    config = pinned.config({"curve": [0.2]})
    assert config == {"curve": [0.2], "lr": 0.01}
    plan = build_plan(src, "toy", ["T"], 1, 4, ["T.lr=0.01", "T.curve=[[0.2]]"])
    assert plan.runs[0].key == RunSpec("toy", "T", config, 999, 4).key


def test_space_file_ranges_replace_grid_keys_and_set_wins(tmp_path):
    from mmrec_rearm.experiments.tune_space import build_space

    src = mmrec_src(fake_mmrec(tmp_path))
    space_file = tmp_path / "space.yaml"
    space_file.write_text("lr: {low: 1e-4, high: 1e-1, log: true}\nwidth: {low: 4, high: 64, step: 4}\n"
                          "drop: {type: float, low: 0, high: 0.5, step: 0.1}\nmode: [a, b]\n")
    space = build_space(src, "U", "toy", overrides=["U.mode=a"], space_file=space_file)
    assert list(space.params) == ["lr", "width", "drop"]
    assert (space.params["lr"].kind, space.params["lr"].log, space.params["width"].kind) == ("float", True, "int")
    assert any("'mode' is pinned by --set" in w for w in space.warnings)
    assert any("'drop' is not in U's MMRec configuration" in w for w in space.warnings)
    assert space.config({"lr": 0.01, "width": 16, "drop": 0.2}) == {"mode": "a", "lr": 0.01, "width": 16, "drop": 0.2}
    study = optuna.create_study()
    study.enqueue_trial({"drop": 0.30000000000000004})               # low + 3 * step in floating point
    assert space.params["drop"].suggest(study.ask()) == 0.3
    with pytest.raises(ConfigError, match="nothing to search for U on toy.*give a space file"):
        build_space(src, "U", "toy")


@pytest.mark.parametrize("text, message", [
    ("- 1\n- 2\n", "expected a mapping of configuration key"),
    ("lr: 0.1\n", "lr: expected a list of values or a mapping"),
    ("lr: {low: 1, hi: 2}\n", r"lr: unknown field\(s\) \['hi'\]"),
    ("lr: {low: 1}\n", "lr: a range needs 'low' and 'high'"),
    ("lr: {low: x, high: 2}\n", "lr: low must be a number, got 'x'"),
    ("lr: {low: 2, high: 1}\n", r"lr: low \(2\) must be below high \(1\)"),
    ("lr: {low: 0.0, high: 1.0, log: true}\n", "lr: a log-scale range needs low > 0"),
    ("lr: {low: 0.1, high: 1.0, log: true, step: 0.1}\n", "step and log cannot be combined"),
    ("lr: {low: 1, high: 5, step: -1}\n", "step must be a positive number"),
    ("lr: {type: int, low: 1, high: 5.5}\n", "an int range needs integer low/high/step"),
    ("lr: {type: cube, low: 1, high: 5}\n", "type 'cube' is not one of"),
    ("lr: []\n", "choices must be a non-empty list"),
    ("lr: [1, 1]\n", "repeat a value"),
    ("lr: {choices: [1, 2], low: 0}\n", "'choices' makes a categorical"),
    ("epochs: [1, 2]\n", "'epochs' is set by tune itself"),
    ("bad-key: [1, 2]\n", "not a configuration key name"),
])
def test_space_file_errors_name_file_key_and_value(tmp_path, text, message):
    from mmrec_rearm.experiments.tune_space import read_space_file

    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        read_space_file(path)
    assert str(path) in str(caught.value)


def test_rearm_uses_the_shipped_space_when_its_grid_is_empty(tmp_path):
    from mmrec_rearm.experiments.tune_space import build_space

    rearm_yaml = (Path(__file__).resolve().parents[1] / "configs" / "model" / "REARM.yaml").read_text()
    root = make_fake_mmrec(tmp_path / "mmrec", {"REARM": rearm_yaml})
    space = build_space(mmrec_src(root), "REARM", "toy", overrides=["REARM.rank=3"])
    assert {"n_layers", "uu_co_weight", "ii_co_weight", "reg_weight"} <= set(space.params)
    assert "rank" not in space.params and space.params["reg_weight"].log


# ------------------------------------------------------------------------------------------------
# tune in one process (runs faked in-process), compare --from-tune


def test_tune_selects_on_validation_prunes_and_records_every_trial(tmp_path):
    root = fake_mmrec(tmp_path)
    calls = []
    report = _tune(root, tmp_path, 10, run_fn=curve_run(calls), jobs=2)
    study = optuna.load_study(study_name="toy.T", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "results" / "toy" / "optuna.journal"))))
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") + states.count("PRUNED") >= 10 and "FAIL" not in states
    assert states.count("PRUNED") >= 1
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    # the winner is the best VALIDATION value; its test value (1 - valid) is the worst of all
    best = max(complete, key=lambda t: t.value)
    assert report.best["number"] == best.number and report.best["value"] == pytest.approx(best.value)
    store = RunStore(tmp_path / "results", "toy").latest()
    tests = {t.number: store[t.user_attrs["run_key"]]["test"]["recall@20"] for t in complete}
    assert tests[best.number] == min(tests.values())
    # every trial is a record (one per run key), pruned ones stopped early
    for trial in trials:
        record = store[trial.user_attrs["run_key"]]
        assert record["tune"]["study"] == "toy.T" and record["model"] == "T" and record["seed"] == 999
        if trial.state.name == "PRUNED" and record["status"] == "pruned":
            assert len(record["history"]) < 4 and "pruned at epoch" in record["message"]
    # a configuration runs again only after its earlier run was pruned (and the pruner now lets it
    # go on); a finished one never runs twice
    history = RunStore(tmp_path / "results", "toy").read()[0]
    for key in {c.key for c in calls if [d.key for d in calls].count(c.key) > 1}:
        assert [r["status"] for r in history if r["key"] == key][:-1] == ["pruned"] * ([c.key for c in calls].count(key) - 1)
    assert len([r for r in history if r["status"] == "ok"]) == len({r["key"] for r in history if r["status"] == "ok"})
    summary = report.files["summary"].read_text()
    assert f"Trial {best.number}: validation recall@20 **{best.value:.4f}**" in summary
    assert "test" not in summary.split("## Trials")[1].lower()
    assert {"history", "importances", "intermediate"} <= set(report.files) or "matplotlib" in summary
    # rerunning continues the same study up to the new budget, without redoing finished runs
    again = _tune(root, tmp_path, 12, run_fn=curve_run(calls), jobs=1)
    assert again.counts.get("complete", 0) + again.counts.get("pruned", 0) >= 12


def test_a_run_that_trained_its_last_epoch_is_complete_never_pruned(tmp_path):
    """Two finished trials report validation only at their last epoch (MMRec's eval_step); the third
    is below their median from epoch 0 on, but the pruner can judge it only at that last epoch, when
    stopping it would save nothing and lose its test values: it completes."""
    root = fake_mmrec(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 1.0e-4, high: 1.0e-1, log: true}\n")    # distinct values: no reused runs
    calls = []

    def run(spec, extra, on_event):
        calls.append(spec)
        curve = [None, None, None, 0.5] if len(calls) <= 2 else [0.1, 0.1, 0.1, 0.1]
        history = []
        for epoch, score in enumerate(curve):
            if score is not None:
                history.append({"epoch": epoch, "valid_score": score})
            on_event({"event": "epoch", "epoch": epoch, "valid_score": score, "loss": 1.0})
        best = max(s for s in curve if s is not None)
        return {"status": "ok", "valid": {"recall@20": best}, "test": {"recall@20": 1 - best},
                "best_epoch": curve.index(best), "history": history, "wall_s": 0.01}

    report = _tune(root, tmp_path, 3, run_fn=run, jobs=1, space_file=space, overrides=["T.curve=[[0.0]]"],
                   summary=False)
    study = optuna.load_study(study_name="toy.T", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "results" / "toy" / "optuna.journal"))))
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 3 and len(calls) == 3
    assert study.get_trials()[2].value == pytest.approx(0.1) and report.counts == {"complete": 3}
    # the same pruner does stop a trial below the median before its last epoch
    calls.clear()
    _tune(root, tmp_path, 4, run_fn=run, jobs=1, space_file=space, overrides=["T.curve=[[0.0]]"], epochs=5,
          study_name="five", summary=False)
    five = optuna.load_study(study_name="five", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "results" / "toy" / "optuna.journal"))))
    assert [t.state.name for t in five.get_trials()] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]


def test_a_study_refuses_other_settings_and_needs_optuna_message(tmp_path):
    root = fake_mmrec(tmp_path)
    _tune(root, tmp_path, 2, run_fn=curve_run([]), summary=False)
    with pytest.raises(ConfigError, match=r"study 'toy.T' .* other settings \(epochs: 4; now epochs: 3\).*--study"):
        _tune(root, tmp_path, 3, run_fn=curve_run([]), epochs=3, summary=False)


def test_compare_from_tune_runs_the_winners_and_reuses_their_runs(tmp_path):
    root = fake_mmrec(tmp_path)
    tuned = _tune(root, tmp_path, 8, run_fn=curve_run([]))
    calls = []
    with pytest.raises(ConfigError, match=r"no study 'toy.U'.*mmrec-rearm tune"):
        compare(root, "toy", ["T", "U"], seeds=2, epochs=4, results_dir=tmp_path / "results", progress=None,
                from_tune={}, run_fn=curve_run(calls))
    lines = []
    report = compare(root, "toy", ["T"], seeds=2, epochs=4, results_dir=tmp_path / "results",
                     progress=lines.append, from_tune={}, run_fn=curve_run(calls), target=None)
    assert report.plan.configs["T"] == [tuned.best["config"]]
    assert [c.seed for c in calls] == [1000]                     # seed 999 is the winning trial's own run
    assert report.summaries["T"].selected.config == tuned.best["config"]
    assert any(f"trial {tuned.best['number']} of study 'toy.T'" in line for line in lines)
    assert "tuned configurations" in (tmp_path / "results" / "toy" / "table2.md").read_text()


def test_dead_local_worker_trial_is_failed_and_queued_again(tmp_path):
    from mmrec_rearm.experiments.tune import WORKER, fail_dead_local_trials

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    trial = study.ask()
    trial.suggest_int("x", 0, 9)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    trial.set_user_attr("worker", f"{WORKER.rsplit(':', 1)[0]}:{gone.pid}")
    alive = study.ask()
    alive.set_user_attr("worker", WORKER)
    lines = []
    assert fail_dead_local_trials(study, lines.append) == 1
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states[trial.number] == "FAIL" and states[alive.number] == "RUNNING"
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1 and "is gone" in lines[0]
    retry = study.ask()                                           # the next trial asked is the queued one
    assert retry.suggest_int("x", 0, 9) == trial.params["x"] and retry.user_attrs["retry_of"] == trial.number


# ------------------------------------------------------------------------------------------------
# two worker processes on one embedded (journal file) study, real runner subprocesses


def test_two_worker_processes_share_one_embedded_study(tmp_path):
    root = fake_mmrec(tmp_path)
    results = tmp_path / "results"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "mmrec_rearm.cli", "tune", "--mmrec", str(root), "-d", "toy", "-m", "T",
               "--trials", "10", "--epochs", "4", "--results", str(results), "--startup-trials", "2",
               "--set", "T.pause=0.3"]
    # over 1 s a trial: even when one process starts seconds after the other on a busy machine, the first
    # cannot finish all ten trials alone (fake runs start in 0.1 s)
    workers = [subprocess.Popen(command + ["--sampler-seed", str(i)], env=env, cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(results / "toy" / "optuna.journal")))
    trials = optuna.load_study(study_name="toy.T", storage=storage).get_trials()
    states = [t.state.name for t in trials]
    finished = states.count("COMPLETE") + states.count("PRUNED")
    assert 10 <= finished <= 11 and "RUNNING" not in states       # at most one extra: the other worker's last
    assert states.count("PRUNED") >= 1
    assert len({t.user_attrs["worker"] for t in trials}) == 2      # both processes ran trials
    records = RunStore(results, "toy").read()[0]
    ok_keys = [r["key"] for r in records if r["status"] == "ok"]
    assert len(ok_keys) == len(set(ok_keys))                       # no configuration finished twice
    assert any(r["status"] == "pruned" and r["epochs_run"] < 4 for r in records)
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert best.value == pytest.approx(max(r["valid"]["recall@20"] for r in records if r["status"] == "ok"))
    assert (results / "toy" / "tune" / "toy.T.md").is_file()


def _running(pattern: str) -> list:
    """pids of this machine's processes whose command line contains ``pattern``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and pattern in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the run subprocesses")
def test_sigterm_kills_the_trials_in_flight_and_the_next_call_reruns_them(tmp_path):
    import signal
    import time

    root = fake_mmrec(tmp_path)
    results = tmp_path / "results"
    # a float range: the two trials in flight never draw the same values (with a 12-value grid they did
    # one time in 12, and the second then waited for the first's run to reuse it instead of starting)
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 1.0e-4, high: 1.0e-1, log: true}\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "mmrec_rearm.cli", "tune", "--mmrec", str(root), "-d", "toy", "-m", "T",
               "--trials", "3", "--epochs", "4", "--results", str(results), "--jobs", "2", "--set", "T.pause=3",
               "--space", str(space)]
    # 3 s per epoch: on a busy machine no trial may finish before the second one's run has started
    worker = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while len(_running(str(results / "toy" / "logs"))) < 2 and time.time() < deadline:
        time.sleep(0.2)                                             # both trials' runs have started
    worker.send_signal(signal.SIGTERM)
    output = worker.communicate(timeout=60)[0]
    assert worker.returncode == 130 and "rerun the same command" in output, output
    time.sleep(0.5)
    assert _running(str(results / "toy" / "logs")) == []            # no orphan keeps training
    assert not (results / "toy" / "runs.jsonl").exists()            # an interrupted run is not a result
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(results / "toy" / "optuna.journal")))
    trials = optuna.load_study(study_name="toy.T", storage=storage).get_trials()
    assert sorted(t.state.name for t in trials) == ["FAIL", "FAIL", "WAITING", "WAITING"]
    # the same command and settings; the pause only had to outlast the start of the second trial
    rerun = subprocess.run(command, env=dict(env, TUNE_TEST_PAUSE_S="0"), text=True, capture_output=True, timeout=180)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    trials = optuna.load_study(study_name="toy.T", storage=storage).get_trials()
    retried = {t.user_attrs.get("retry_of") for t in trials if t.state.name in ("COMPLETE", "PRUNED")}
    assert {t.number for t in trials if t.state.name == "FAIL"} <= retried  # the killed values ran again


def test_tune_command_line_and_missing_optuna_message(tmp_path, monkeypatch, capsys):
    root = fake_mmrec(tmp_path)
    monkeypatch.chdir(tmp_path)
    status = main(["tune", "--mmrec", str(root), "-d", "toy", "-m", "T", "--trials", "0"])
    assert status == 2 and "--trials 0: expected a positive number" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "optuna", None)               # as if it were not installed
    status = main(["tune", "--mmrec", str(root), "-d", "toy", "-m", "T", "--trials", "2", "--jobs", "2", "--dry-run"])
    out = capsys.readouterr().out
    assert status == 0 and "not opened" in out and "2 trial(s) at once" in out and "lr: one of [0.1, 0.01]" in out
    assert not (tmp_path / "results").exists()
    status = main(["tune", "--mmrec", str(root), "-d", "toy", "-m", "T", "--trials", "2"])
    assert status == 2 and "pip install 'mmrec-rearm[tune]'" in capsys.readouterr().err
    status = main(["compare", "--mmrec", str(root), "-d", "toy", "-m", "T", "--from-tune", "T"])
    assert status == 2 and "--from-tune 'T': expected MODEL=STUDY" in capsys.readouterr().err
