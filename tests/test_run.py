"""`mmrec-rearm run` and what it shares with compare: the runner's events and their display, the
training state files (save, weights-only load, restore), capped runs, --mmrec everywhere and hints
that run as pasted, the feature check. Against the fake MMRec of test_experiments.py and in-process
objects; the real-MMRec kill-and-resume test is tests/test_resume_mmrec.py."""
from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmrec_rearm import cli
from mmrec_rearm.errors import ConfigError, DatasetError
from mmrec_rearm.experiments import runner_events as events
from mmrec_rearm.experiments import runner_state as state
from mmrec_rearm.experiments.launch import StopRun, launch
from mmrec_rearm.experiments.plan import RunSpec
from mmrec_rearm.experiments.prepare import device_settings
from mmrec_rearm.experiments.progress import ProgressDisplay, epoch_line
from mmrec_rearm.experiments.stats import near_cap, summarise
from mmrec_rearm.experiments.store import RunStore
from mmrec_rearm.experiments.tables import report_markdown, table2_markdown
from mmrec_rearm.modalities import MMREC_DATA_URL

from test_experiments import MODEL_A, make_fake_mmrec, record


# ------------------------------------------------------------------------------------------------
# the run command against the fake MMRec


def test_run_trains_once_records_and_shows_numbered_epoch_lines(tmp_path, monkeypatch, capsys):
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A})
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--mmrec", "mmrec", "-d", "toy", "-m", "A", "--epochs", "3", "--set", "t=0.1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    # the grid key v has two candidates: the run takes the first and says so
    assert "grid-searches v (2 configurations); this run takes the first candidate of each: v=0.3" in out
    assert "epoch   0/3 " in out and "epoch   2/3 " in out
    assert "loss 0.5000  valid recall@20 0.3000  best 0.3000 (epoch 1) *" in out
    assert "done in" in out and "best epoch 1 of 3 run (cap 3)" in out
    (rec,) = RunStore(tmp_path / "results", "toy").read()[0]
    assert rec["status"] == "ok" and rec["config"] == {"v": 0.3, "t": 0.1} and rec["epochs"] == 3
    assert [h["epoch"] for h in rec["history"]] == [0, 1, 2] and rec["history"][1]["losses"] == {"loss": 0.5}
    assert rec["epoch_cap"] == 3 and rec["stopped_early"] is False
    # the same command again: nothing is trained, the record is shown
    assert cli.main(argv) == 0
    assert "already finished" in capsys.readouterr().out
    assert len(RunStore(tmp_path / "results", "toy").read()[0]) == 1
    assert cli.main(argv + ["--fresh"]) == 0
    assert len(RunStore(tmp_path / "results", "toy").read()[0]) == 2
    # a dry run checks and starts nothing
    assert cli.main(argv[:-1] + ["t=0.2", "--dry-run"]) == 0
    assert "dry run: checks passed, nothing started" in capsys.readouterr().out
    assert not (root / "src" / "results").exists()


def test_run_shares_keys_with_compare(tmp_path, monkeypatch, capsys):
    from mmrec_rearm.experiments import compare

    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A})
    assert cli.main(["run", "--mmrec", str(root), "-d", "toy", "-m", "A", "--epochs", "2", "--set", "v=0.3",
                     "t=0.1", "--results", str(tmp_path / "res")]) == 0
    report = compare(root, "toy", ["A"], epochs=2, overrides=["A.v=0.3", "A.t=0.1"], results_dir=tmp_path / "res",
                     progress=None, target="")
    assert (report.executed, report.skipped) == (0, 1)   # compare finds run's record


def test_stop_run_from_an_event_handler_and_one_process_per_run(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A})
    spec = RunSpec("toy", "A", {"curve": [0.1, 0.2, 0.3, 0.4]}, 1, 4)
    seen = []

    def prune(event):
        seen.append(event)
        if event.get("event") == "epoch" and event["epoch"] == 1:
            raise StopRun("pruned at epoch 1")

    result = launch(spec, root / "src", sys.executable, tmp_path / "logs", on_event=prune)
    assert result["status"] == "stopped" and result["message"] == "pruned at epoch 1"
    assert [h["epoch"] for h in result["history"]] == [0, 1]
    assert [h["valid_score"] for h in result["history"]] == [0.1, 0.2]
    assert all(e.get("valid") is None or "test" not in json.dumps(e) for e in seen)  # events never carry test
    # a second process on the same run is refused while the first holds its lock
    import fcntl

    state_path = tmp_path / "state" / f"{spec.key}.pt"
    state_path.parent.mkdir()
    with open(str(state_path) + ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = launch(spec, root / "src", sys.executable, tmp_path / "logs", state_path=state_path)
    assert busy["status"] == "failed" and "being trained by another process" in busy["message"]


# ------------------------------------------------------------------------------------------------
# events and their display


class _Model:
    loss_names = ("bpr", "cl", "ort", "reg")


def test_loss_names_come_from_the_model_or_are_numbered():
    assert events.named_losses(_Model(), (1.0, 2.0, 3.0, 4.0)) == {"bpr": 1.0, "cl": 2.0, "ort": 3.0, "reg": 4.0}
    assert events.named_losses(_Model(), (1.0, 2.0)) == {"loss1": 1.0, "loss2": 2.0}   # names do not fit
    assert events.named_losses(object(), 0.5) == {"loss": 0.5}
    assert events.named_losses(object(), (1.0, float("nan"))) == {"loss1": 1.0, "loss2": None}


def _epoch_event(**extra):
    event = {"event": "epoch", "epoch": 3, "epochs": 30, "train_s": 11.2, "eval_s": 1.25,
             "losses": {"bpr": 20.69312, "cl": 0.0012, "ort": 4.2e-05, "reg": 0.0}, "valid_metric": "recall@20",
             "valid_score": 0.0412, "best_score": 0.0412, "best_epoch": 3, "improved": True}
    event.update(extra)
    return event


def test_epoch_line_has_number_time_named_losses_and_the_validation_metric():
    assert epoch_line(_epoch_event()) == (
        "epoch   3/30    12.4 s (train 11.2 + eval 1.2)  bpr 20.6931  cl 0.0012  ort 4.200e-05  reg 0.0000  "
        "valid recall@20 0.0412  best 0.0412 (epoch 3) *")
    nan = epoch_line(_epoch_event(nan=True, losses={}, valid_score=None, eval_s=None))
    assert nan.startswith("epoch   3/30    11.2 s  ") and "loss is NaN" in nan


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_and_plain_lines_elsewhere():
    screen, lines = _Terminal(), []
    show = ProgressDisplay(lines.append, screen, bar=True)
    show({"event": "batch", "epoch": 3, "batch": 6, "batches": 24, "seconds": 3.0})
    assert screen.getvalue() == "\repoch   3 [######..................] 6/24 batches  3.0 s, ~9 s left\x1b[K"
    show(_epoch_event())
    assert screen.getvalue().endswith("\r\x1b[K") and lines == [epoch_line(_epoch_event())]
    plain = []
    quiet = ProgressDisplay(plain.append, plain_every_s=0.0, bar=False)
    for done in (1, 2, 3):
        quiet({"event": "batch", "epoch": 0, "batch": done, "batches": 3, "seconds": float(done)})
    assert plain == ["epoch   0: 1/3 batches  1.0 s, ~2 s left", "epoch   0: 2/3 batches  2.0 s, ~1 s left"]
    slow = []
    ProgressDisplay(slow.append, bar=False)({"event": "batch", "epoch": 0, "batch": 1, "batches": 3, "seconds": 1.0})
    assert slow == []                                  # not yet 30 s into the epoch


def test_batches_wrapper_iterates_the_loader_and_reports(capsys, monkeypatch):
    monkeypatch.setattr(events, "BATCH_EVERY_S", 0.0)

    class Loader:
        step = 7

        def __iter__(self):
            return iter([10, 20, 30])

        def __len__(self):
            return 3

    wrapped = events.Batches(Loader(), epoch=2)
    assert list(wrapped) == [10, 20, 30] and len(wrapped) == 3 and wrapped.step == 7
    lines = [json.loads(line[len(events.PROGRESS_PREFIX):]) for line in capsys.readouterr().out.splitlines()]
    assert [(e["epoch"], e["batch"], e["batches"]) for e in lines] == [(2, 1, 3), (2, 2, 3), (2, 3, 3)]


# ------------------------------------------------------------------------------------------------
# training state: everything MMRec's loop needs, weights-only, restored bit for bit


class _Loader:
    """MMRec's training loader in miniature: a frame reshuffled in place by pandas every epoch."""

    def __init__(self):
        self.dataset = type("D", (), {})()
        self.dataset.df = pd.DataFrame({"userID": np.arange(12) % 5, "itemID": np.arange(12) % 7,
                                        "x_label": np.zeros(12, dtype=np.int64)})

    def shuffle(self):
        self.dataset.df = self.dataset.df.sample(frac=1).reset_index(drop=True)


class _Trainer:
    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(3, 2)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.1)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: 0.9 ** e)
        self.cur_step, self.best_valid_score = 0, -1
        self.best_valid_result, self.best_test_upon_valid, self.train_loss_dict = {}, {}, {}

    def epoch(self, loader: _Loader, epoch: int) -> float:
        loader.shuffle()
        rows = torch.tensor(loader.dataset.df[["userID", "itemID", "x_label"]].to_numpy(), dtype=torch.float32)
        noise = torch.randn(2) + float(np.random.rand()) + random.random()
        loss = (self.model(rows).sum(0) * noise).pow(2).sum()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.lr_scheduler.step()
        self.train_loss_dict[epoch] = float(loss)
        self.best_valid_score, self.cur_step = float(loss), epoch
        self.best_valid_result = {"recall@20": float(loss) / 7}
        return float(loss)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def test_state_round_trip_continues_exactly_and_loads_weights_only(tmp_path):
    _seed_all(5)
    straight, straight_loader = _Trainer(), _Loader()
    losses = [straight.epoch(straight_loader, e) for e in range(4)]

    _seed_all(5)
    first, loader = _Trainer(), _Loader()
    for e in range(2):
        first.epoch(loader, e)
    signature = state.data_signature(loader)
    path = tmp_path / "s.pt"
    state.save(str(path), state.capture(first, loader, epoch=1, finished=False, run_key="k", digest="d",
                                        signature=signature, recorder_json="{}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.pt"]          # no temporary left
    payload = torch.load(path, map_location="cpu", weights_only=True)     # no pickled objects
    assert payload["format"] == state.STATE_FORMAT and payload["epoch"] == 1

    _seed_all(99)                          # another process: other random state, fresh objects
    second, fresh_loader = _Trainer(seed=7), _Loader()
    state.check(payload, str(path), run_key="k", digest="d", signature=state.data_signature(fresh_loader))
    state.restore(second, fresh_loader, payload)
    resumed = [second.epoch(fresh_loader, e) for e in (2, 3)]
    assert resumed == losses[2:]                                              # bit for bit
    assert torch.equal(second.model.weight, straight.model.weight)
    assert second.optimizer.state_dict()["state"][0]["step"] == straight.optimizer.state_dict()["state"][0]["step"]
    assert second.lr_scheduler.get_last_lr() == straight.lr_scheduler.get_last_lr()
    assert second.train_loss_dict == straight.train_loss_dict
    assert fresh_loader.dataset.df.equals(straight_loader.dataset.df)


def test_state_is_refused_for_another_run_or_other_data(tmp_path):
    loader = _Loader()
    payload = state.capture(_Trainer(), loader, epoch=0, finished=False, run_key="k", digest="d",
                            signature=state.data_signature(loader), recorder_json="{}")
    sig = state.data_signature(loader)
    loader.shuffle()
    assert state.data_signature(loader) == sig                               # order does not matter
    with pytest.raises(state.StateError, match="run_key"):
        state.check(payload, "s.pt", run_key="other", digest="d", signature=sig)
    loader.dataset.df.loc[0, "itemID"] = 6 - loader.dataset.df.loc[0, "itemID"] % 7
    with pytest.raises(state.StateError, match="data_signature"):
        state.check(payload, "s.pt", run_key="k", digest="d", signature=state.data_signature(loader))
    assert state.config_digest({"a": 1, "gpu_id": 0, "data_path": "x/"}) == state.config_digest(
        {"a": 1, "gpu_id": 3, "use_gpu": True})                              # where a run happens is not what it is
    (tmp_path / "bad.pt").write_bytes(b"not a state")
    with pytest.raises(state.StateError, match="unreadable training state"):
        state.load(str(tmp_path / "bad.pt"))


# ------------------------------------------------------------------------------------------------
# capped runs


def _capped_records():
    recs = [dict(record("LightGCN", {}, s, {"recall@20": 0.1}, {"recall@20": 0.09}), epochs=30, epoch_cap=30,
                 best_epoch=best, stopped_early=False) for s, best in ((1, 29), (2, 20))]
    recs += [dict(record("REARM", {}, s, {"recall@20": 0.2}, {"recall@20": 0.08}), epochs=30, epoch_cap=30,
                  best_epoch=10, stopped_early=True) for s in (1, 2)]
    return summarise(recs, {"LightGCN": "recall@20", "REARM": "recall@20"}, ["REARM", "LightGCN"])


def test_runs_whose_best_epoch_is_at_the_cap_are_marked():
    assert near_cap({"epoch_cap": 30, "best_epoch": 27}) and not near_cap({"epoch_cap": 30, "best_epoch": 26})
    assert near_cap({"epochs": 5, "best_epoch": 4}) and not near_cap({"epochs": 5, "best_epoch": 3})
    assert not near_cap({"epoch_cap": 30, "best_epoch": 29, "stopped_early": True})
    assert not near_cap({"epoch_cap": None, "best_epoch": 29})
    summaries = _capped_records()
    table = table2_markdown("tiktok", summaries, ["REARM", "LightGCN"], "REARM")
    assert "| LightGCN † |" in table and "| REARM |" in table
    assert "† best validation epoch in the last 10% of the epoch budget" in table
    report = report_markdown("tiktok", summaries, ["REARM", "LightGCN"], [], "REARM", "s")
    assert "| 1: 29 of 30 †, 2: 20 |" in report


def test_compare_warns_about_a_model_at_the_cap(tmp_path):
    from mmrec_rearm.experiments import compare

    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A})
    lines = []
    compare(root, "toy", ["A"], epochs=3, overrides=["A.v=0.3", "A.t=0.1", "A.curve=[0.1, 0.2, 0.3]"],
            results_dir=tmp_path / "res", python=sys.executable, progress=lines.append, target="")
    text = "\n".join(lines)
    assert "warning: A: best validation epoch at the epoch cap in 1 of 1 seed(s) (epoch 2 of 3)" in text
    assert "| A † |" in text
    (spec,) = [json.loads(p.read_text()) for p in (tmp_path / "res" / "toy" / "logs").glob("*.json")
               if not p.name.endswith(".result.json")]
    assert spec["state_path"] == str(tmp_path / "res" / "toy" / "state" / f"{spec['run_key']}.pt")  # compare resumes too
    assert spec["resume"] is True


# ------------------------------------------------------------------------------------------------
# --mmrec on every command that takes a checkout, hints that run as pasted


def _installable_fake(root: Path) -> Path:
    """The fake MMRec plus what the installer checks for, without REARM."""
    make_fake_mmrec(root, {"A": MODEL_A})
    (root / "src" / "main.py").write_text("")
    (root / "src" / "common" / "abstract_recommender.py").write_text("")
    return root


def test_the_hint_for_a_missing_rearm_runs_as_printed(tmp_path, monkeypatch, capsys):
    root = _installable_fake(tmp_path / "My MMRec")            # a space: the hint must quote it
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--mmrec", str(root), "-d", "toy", "--dry-run"]) == 2
    err = capsys.readouterr().err
    hint = err.split("REARM is not installed into this checkout yet: run `", 1)[1].split("`", 1)[0]
    assert "--mmrec" in hint and "<" not in hint
    done = subprocess.run(hint, shell=True, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (root / "src" / "models" / "rearm.py").is_file()
    assert cli.main(["run", "--mmrec", str(root), "-d", "toy", "--dry-run"]) == 0


def test_installer_commands_take_mmrec_or_the_folder(tmp_path, capsys):
    root = _installable_fake(tmp_path / "mmrec")
    assert cli.main(["install", "--mmrec", str(root)]) == 0
    assert (root / "src" / "models" / "rearm.py").is_file()
    assert cli.main(["uninstall", str(root)]) == 0 and not (root / "src" / "models" / "rearm.py").exists()
    assert cli.main(["install", str(root), "--mmrec", str(root / "src")]) == 0      # the same checkout twice
    assert cli.main(["uninstall", "--mmrec", str(root)]) == 0
    capsys.readouterr()
    assert cli.main(["install", str(root), "--mmrec", str(tmp_path)]) == 2
    assert "name two checkouts" in capsys.readouterr().err
    assert cli.main(["uninstall"]) == 2 and "which MMRec checkout" in capsys.readouterr().err


def test_device_option():
    assert device_settings(None) == {} and device_settings("cpu") == {"use_gpu": False}
    assert device_settings("cuda") == {"use_gpu": True, "gpu_id": 0}
    assert device_settings("cuda:3") == {"use_gpu": True, "gpu_id": 3}
    with pytest.raises(ConfigError, match="cpu, cuda or cuda:K"):
        device_settings("gpu1")


# ------------------------------------------------------------------------------------------------
# a multimodal model on a folder without features says where real features come from


def test_baby_without_features_names_mmrecs_source_and_where_to_put_them(tmp_path, monkeypatch, capsys):
    root = make_fake_mmrec(tmp_path / "mmrec", {"FREEDOM": "n_layers: 1\n"}, dataset="baby")
    overall = root / "src" / "configs" / "overall.yaml"
    overall.write_text(overall.read_text() + "is_multimodal_model: True\n")
    (root / "src" / "configs" / "dataset" / "baby.yaml").write_text(textwrap.dedent("""\
        inter_file_name: 'baby.inter'
        vision_feature_file: 'image_feat.npy'
        text_feature_file: 'text_feat.npy'
        """))
    assert cli.main(["run", "--mmrec", str(root), "-d", "baby", "-m", "FREEDOM", "--dry-run"]) == 2
    err = capsys.readouterr().err
    folder = root / "data" / "baby"
    assert MMREC_DATA_URL in err and "data/README.md" in err
    assert f"{folder / 'image_feat.npy'} and {folder / 'text_feat.npy'}" in err
    np.save(folder / "text_feat.npy", np.zeros((3, 2), np.float32))
    assert cli.main(["run", "--mmrec", str(root), "-d", "baby", "-m", "FREEDOM", "--dry-run"]) == 0


def test_rearm_without_features_fails_before_the_host_with_the_same_help(tmp_path):
    from mmrec_rearm.host import ArrayDataLoader
    from mmrec_rearm.model.rearm import REARM

    folder = tmp_path / "baby"
    folder.mkdir()
    config = {"dataset": "baby", "data_path": str(tmp_path) + os.sep, "vision_feature_file": "image_feat.npy",
              "text_feature_file": "text_feat.npy", "device": "cpu"}
    with pytest.raises(DatasetError, match="image_feat.npy and .*text_feat.npy not found") as caught:
        REARM(config, ArrayDataLoader([0, 1], [0, 1]))
    assert MMREC_DATA_URL in str(caught.value)


# ------------------------------------------------------------------------------------------------
# graphs --mmrec: exactly the graphs training uses


def test_graphs_from_a_checkout_are_the_ones_rearm_trains_with(tmp_path, monkeypatch, capsys, caplog):
    """A TikTok-like dataset whose second slot is audio: `graphs --mmrec -d` keeps both modalities
    (the folder form without --feature looked for text_feat.npy and dropped the audio), and a REARM
    built as MMRec builds it then reads exactly these graphs from the cache."""
    import logging
    import shutil

    from mmrec_rearm.data import read_interactions
    from mmrec_rearm.experiments.mmrec_config import merged_config
    from mmrec_rearm.host import ArrayDataLoader
    from mmrec_rearm.model.rearm import REARM
    from mmrec_rearm.synth import make_demo_dataset
    from conftest import REPO_ROOT

    monkeypatch.delenv("MMREC_REARM_CACHE_DIR", raising=False)
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A}, dataset="tt")
    src = root / "src"
    shutil.copy(REPO_ROOT / "configs" / "model" / "REARM.yaml", src / "configs" / "model" / "REARM.yaml")
    (src / "configs" / "dataset" / "tt.yaml").write_text(
        "inter_file_name: 'tt.inter'\nvision_feature_file: 'image_feat.npy'\ntext_feature_file: 'audio_feat.npy'\n"
        "user_knn_k: 5\nitem_knn_k: 3\n")
    folder = root / "data" / "tt"
    shutil.rmtree(folder)
    made = make_demo_dataset(tmp_path / "made", name="tt", n_users=50, n_items=30, seed=2, image_dim=6, text_dim=4)
    folder.mkdir()
    for name, target in (("tt.inter", "tt.inter"), ("image_feat.npy", "image_feat.npy"), ("text_feat.npy", "audio_feat.npy")):
        shutil.copy(made / name, folder / target)

    assert cli.main(["graphs", "--mmrec", str(root), "-d", "tt"]) == 0
    out = capsys.readouterr().out
    assert "modalities=image_feat:6,audio_feat:4" in out and "(miss)" in out
    assert str(folder / ".rearm_cache") in out

    monkeypatch.chdir(src)          # where MMRec runs, and where REARM reads the dataset YAML
    config = dict(merged_config(src, "REARM", "tt"), dataset="tt", data_path="../data/", device="cpu",
                  train_batch_size=64)
    rows = read_interactions(folder / "tt.inter")
    train = rows.labels == 0
    loader = ArrayDataLoader(rows.users[train], rows.items[train], int(rows.users.max()) + 1, int(rows.items.max()) + 1)
    with caplog.at_level(logging.INFO):
        model = REARM(config, loader)
    assert model.modality_names == ("image_feat", "audio_feat")
    assert "REARM graphs read from the cache" in caplog.text


def test_graphs_of_a_folder_name_the_feature_files_they_leave_out(tmp_path, capsys, monkeypatch):
    from mmrec_rearm.synth import make_demo_dataset

    monkeypatch.delenv("MMREC_REARM_CACHE_DIR", raising=False)
    made = make_demo_dataset(tmp_path, name="tiktok", n_users=40, n_items=30, seed=3, image_dim=5, text_dim=3)
    (made / "text_feat.npy").rename(made / "audio_feat.npy")
    assert cli.main(["graphs", str(made), "--set", "user_knn_k=3", "item_knn_k=2"]) == 0
    captured = capsys.readouterr()
    assert "modalities=image:5\n" in captured.out                      # the default: image only
    hint = captured.err.split("to include them: `", 1)[1].split("`", 1)[0]
    done = subprocess.run(hint + " --set user_knn_k=3 item_knn_k=2", shell=True, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "modalities=image_feat:5,audio_feat:3" in done.stdout
