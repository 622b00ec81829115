"""experiments/: ablate (Table 3, Fig. 4), sensitivity (Fig. 3), heatmap (Fig. 5), checkpoints written by
the runner, and recommend. Runs are faked (run_fn) or go through a fake MMRec whose trainer follows
MMRec's fit loop; models are a tiny REARM on the stand-in host. No training, CPU only."""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import real_mmrec_runner_or_skip

torch = pytest.importorskip("torch")

from mmrec_rearm.cli import main as cli_main  # noqa: E402
from mmrec_rearm.errors import CheckpointError, ConfigError  # noqa: E402
from mmrec_rearm.experiments.ablate import TABLE3_VARIANTS, ablate, table3_paper  # noqa: E402
from mmrec_rearm.experiments.checkpoints import load_checkpoint, read_splits, rebuild_model  # noqa: E402
from mmrec_rearm.experiments.heatmap import find_checkpoint_pair, heatmap, sample_pairs  # noqa: E402
from mmrec_rearm.experiments.launch import launch  # noqa: E402
from mmrec_rearm.experiments.mmrec_config import mmrec_src  # noqa: E402
from mmrec_rearm.experiments.plan import RunSpec, build_plan  # noqa: E402
from mmrec_rearm.experiments.plots import PlotDependencyError  # noqa: E402
from mmrec_rearm.experiments.recommend import read_users_file, recommend  # noqa: E402
from mmrec_rearm.experiments.runner_checkpoint import checkpoint_payload, checkpoint_target, save_checkpoint  # noqa: E402
from mmrec_rearm.experiments.sensitivity import plot_sensitivity, sensitivity  # noqa: E402
from mmrec_rearm.experiments.stats import summarise  # noqa: E402
from mmrec_rearm.experiments.store import RunStore  # noqa: E402
from mmrec_rearm.experiments.tables import variants_csv, variants_markdown  # noqa: E402
from mmrec_rearm.host import ArrayDataLoader  # noqa: E402
from mmrec_rearm.model.rearm import REARM  # noqa: E402
from mmrec_rearm.synth import make_demo_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: matplotlib is optional (present with MMRec's pins): figures are checked where it is installed.
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------
# A fake MMRec checkout with our real REARM.yaml (so the variant keys exist) and a trivial model.

FAKE_QUICK_START = '''
import logging
import torch
from utils.utils import get_trainer


def quick_start(model, dataset, config_dict, save_model=True, mg=False):
    logging.basicConfig(level=logging.INFO)
    config = dict({"data_path": "../data/"}, **config_dict, model=model, dataset=dataset)  # as overall.yaml
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1, bias=False)
    trainer = get_trainer()(config, net)
    trainer.fit(["train"], valid_data=["valid"], test_data=["test"], saved=save_model)
'''

# MMRec's fit loop in miniature: per epoch train, valid, early stopping (cur_step), test.
FAKE_UTILS = '''
import logging
import torch


class Trainer(object):
    def __init__(self, config, model, mg=False):
        self.config, self.model = config, model
        self.cur_step, self.best_valid_score, self.device = 0, -1, "cpu"

    def _train_epoch(self, train_data, epoch_idx, loss_func=None):
        self.epoch = epoch_idx
        with torch.no_grad():
            self.model.weight.fill_(float(epoch_idx))   # the weights tell the epoch they come from
        return 1.0, []

    def _valid_epoch(self, data):
        score = self.config["curve"][self.epoch]
        factor = 1.0 if data[0] == "valid" else 0.5
        return score, {"recall@20": score * factor, "ndcg@20": score * factor / 2}

    def fit(self, train_data, valid_data=None, test_data=None, saved=False, verbose=True):
        best = ({}, {})
        for epoch in range(len(self.config["curve"])):
            self._train_epoch(train_data, epoch)
            score, valid = self._valid_epoch(valid_data)
            update = score > self.best_valid_score
            self.best_valid_score, self.cur_step = (score, 0) if update else (self.best_valid_score, self.cur_step + 1)
            _, test = self._valid_epoch(test_data)
            logging.getLogger().info("epoch %d evaluating [time: 0.01s, valid_score: %f]" % (epoch, score))
            if update:
                best = (valid, test)
        return self.best_valid_score, best[0], best[1]


def get_trainer():
    return Trainer
'''


def make_fake_mmrec(root: Path, datasets=("baby",)) -> Path:
    src = root / "src"
    for sub in ("utils", "models", "configs/model", "configs/dataset"):
        (src / sub).mkdir(parents=True, exist_ok=True)
    (src / "utils" / "quick_start.py").write_text(FAKE_QUICK_START)
    (src / "utils" / "utils.py").write_text(FAKE_UTILS)
    (src / "configs" / "overall.yaml").write_text(
        "seed: [999]\ndata_path: '../data/'\nvalid_metric: Recall@20\nepochs: 1000\nhyper_parameters: [\"seed\"]\n")
    shutil.copy(REPO / "configs" / "model" / "REARM.yaml", src / "configs" / "model" / "REARM.yaml")
    (src / "models" / "rearm.py").write_text("class REARM:\n    pass\n")
    for name in datasets:
        (src / "configs" / "dataset" / f"{name}.yaml").write_text(
            f"inter_file_name: '{name}.inter'\nvision_feature_file: 'image_feat.npy'\ntext_feature_file: 'text_feat.npy'\n")
        (root / "data" / name).mkdir(parents=True, exist_ok=True)
    return root


def fake_run(calls):
    """run_fn: test R@20 = 0.1 + 0.01 * (variant index) + seed offset; valid mirrors it."""
    order = {"none": 9, **{v.name: i for i, v in enumerate(TABLE3_VARIANTS)}, "first": 20, "second": 21}

    def run(spec, extra, on_event):
        calls.append(spec)
        config = spec.config
        if "uu_co_weight" in config:
            base = 0.05 + 0.1 * config["uu_co_weight"] + (0.01 if spec.dataset == "sports" else 0.0)
        else:
            base = 0.1 + 0.001 * order[config.get("ablation", config.get("modalities", "none"))]
        t = base + 0.002 * (spec.seed - 999)
        return {"status": "ok", "valid": {"recall@20": t + 0.01},
                "test": {"recall@10": t / 2, "recall@20": t, "ndcg@10": t / 4, "ndcg@20": t / 3},
                "best_epoch": 1, "wall_s": 0.1}
    return run


# ------------------------------------------------------------------------------------------------
# ablate: Table 3 and Fig. 4


def test_table3_block_exact_with_the_papers_numbers_beside():
    records = []
    for name, label, values in (("wo_ref", "w/o ref", (0.1000, 0.1020)), ("full", "REARM", (0.1100, 0.1140))):
        for seed, t in zip((999, 1000), values):
            records.append({"key": f"{name}{seed}", "config_id": name, "model": name, "status": "ok", "seed": seed,
                            "config": {} if name == "full" else {"ablation": name}, "valid": {"recall@20": t},
                            "test": {"recall@10": t / 2, "recall@20": t, "ndcg@10": t / 4, "ndcg@20": t / 2}})
    summaries = summarise(records, {"wo_ref": "recall@20", "full": "recall@20"}, ["wo_ref", "full"])
    by_label = {"w/o ref": summaries["wo_ref"], "REARM": summaries["full"]}
    paper = table3_paper("Baby")
    assert paper["w/o ref"] == {"R@20": 0.1070, "N@20": 0.0467} and paper["REARM"] == {"R@20": 0.1105, "N@20": 0.0479}
    assert variants_markdown(["w/o ref", "REARM"], by_label, paper) == (
        "| Variant | R@10 | R@20 | R@20 (paper) | N@10 | N@20 | N@20 (paper) | seeds |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        "| w/o ref | <u>0.0505 ± 0.0007</u> | <u>0.1010 ± 0.0014</u> | 0.1070 | <u>0.0253 ± 0.0004</u> | "
        "<u>0.0505 ± 0.0007</u> | 0.0467 | 2 |\n"
        "| REARM | **0.0560 ± 0.0014** | **0.1120 ± 0.0028** | 0.1105 | **0.0280 ± 0.0007** | "
        "**0.0560 ± 0.0014** | 0.0479 | 2 |\n")
    rows = list(csv.reader(io.StringIO(variants_csv(["w/o ref", "REARM"], by_label, paper,
                                                    {"w/o ref": "wo_ref", "REARM": "full"}))))
    assert rows[0][:6] == ["variant", "label", "seeds", "R@10", "R@10_std", "R@10_paper"]
    assert rows[1][:9] == ["wo_ref", "w/o ref", "2", "0.050500", "0.000707", "", "0.101000", "0.001414", "0.1070"]
    assert rows[2][-1] == "{}" and rows[1][-1] == '{"ablation": "wo_ref"}'
    assert table3_paper("tiktok") == {}


def test_ablate_runs_every_variant_once_resumes_and_writes_both_tables(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec")
    results = tmp_path / "results"
    calls = []
    report = ablate(root, "baby", seeds=2, epochs=5, results_dir=results, progress=None, run_fn=fake_run(calls))
    # 9 Table 3 rows + REARM_V + REARM_T (the full model is shared), x 2 seeds
    assert len(calls) == 22 and report.runs.executed == 22 and report.failed == 0
    assert sorted({json.dumps(s.config, sort_keys=True) for s in calls})[:3] == [
        '{"ablation": "wo_co"}', '{"ablation": "wo_hom"}', '{"ablation": "wo_ii"}']
    # the full variant is compare's plain REARM run: same key
    plain = build_plan(mmrec_src(root), "baby", ["REARM"], 2, 5).runs
    assert {s.key for s in calls if s.config == {}} == {r.key for r in plain}
    assert report.tables["table3"][0] == "w/o uu" and report.tables["table3"][-1] == "REARM"
    assert report.tables["fig4"] == ["REARM_V", "REARM_T", "REARM"]
    table3 = (results / "baby" / "table3.md").read_text()
    assert table3.startswith("# Table 3 layout: baby")
    assert "| w/o sim | 0.0520 ± 0.0007 | 0.1040 ± 0.0014 | 0.0903 |" in table3
    fig4 = (results / "baby" / "fig4.md").read_text()
    assert "`modalities: first`, here `image_feat.npy`" in fig4 and "(paper)" not in fig4
    rows = list(csv.DictReader(open(results / "baby" / "table3.csv")))
    assert [r["variant"] for r in rows] == [v.name for v in TABLE3_VARIANTS]
    assert rows[-1]["R@20_paper"] == "0.1105" and rows[-1]["R@20"] == "0.110000"

    again = []
    second = ablate(root, "baby", seeds=2, epochs=5, results_dir=results, progress=None, run_fn=fake_run(again),
                    parts=["table3"], variants=["wo_ref", "full"])
    assert again == [] and second.runs.skipped == 4 and second.tables == {"table3": ["w/o ref", "REARM"]}


def test_ablate_refuses_to_override_the_variant_switches(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec")
    with pytest.raises(ConfigError, match="'ablation' is what the variants change"):
        ablate(root, "baby", overrides=["REARM.ablation=wo_uu"], results_dir=tmp_path / "r", progress=None,
               run_fn=fake_run([]))
    with pytest.raises(ConfigError, match=r"\['wo_x'\] not among the variants"):
        ablate(root, "baby", variants=["wo_x"], results_dir=tmp_path / "r", progress=None, run_fn=fake_run([]))
    with pytest.raises(ConfigError, match="choose from table3, fig4"):
        ablate(root, "baby", parts=["table9"], results_dir=tmp_path / "r", progress=None, run_fn=fake_run([]))


# ------------------------------------------------------------------------------------------------
# sensitivity: Fig. 3


def test_sensitivity_csv_and_png_from_fake_runs(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec", datasets=("baby", "sports"))
    calls = []
    report = sensitivity(root, ["baby", "sports"], "uu_co_weight", [0, 0.5], seeds=2, results_dir=tmp_path / "r",
                         progress=None, run_fn=fake_run(calls), plot=HAVE_MATPLOTLIB)
    assert len(calls) == 8 and report.values == [0.0, 0.5]
    assert {json.dumps(s.config) for s in calls} == {'{"uu_co_weight": 0.0}', '{"uu_co_weight": 0.5}'}
    rows = list(csv.DictReader(open(report.files["csv"])))
    assert [(r["dataset"], r["uu_co_weight"], r["n"], r["seeds"]) for r in rows] == [
        ("baby", "0.0", "2", "999 1000"), ("baby", "0.5", "2", "999 1000"),
        ("sports", "0.0", "2", "999 1000"), ("sports", "0.5", "2", "999 1000")]
    assert [r["recall@20_mean"] for r in rows] == ["0.051000", "0.101000", "0.061000", "0.111000"]
    assert rows[0]["recall@20_std"] == "0.001414" and rows[0]["recall@20_per_seed"] == "0.050000 0.052000"
    if HAVE_MATPLOTLIB:
        png = report.files["png"]
        assert png == tmp_path / "r" / "sensitivity" / "uu_co_weight.png" and png.read_bytes()[:8] == PNG_MAGIC
    else:
        assert "png" not in report.files
    # the runs are in each dataset's ordinary store: a rerun trains nothing
    rerun = []
    sensitivity(root, ["baby", "sports"], "uu_co_weight", [0.0, 0.5], seeds=2, results_dir=tmp_path / "r",
                progress=None, run_fn=fake_run(rerun), plot=False)
    assert rerun == []
    assert len(RunStore(tmp_path / "r", "sports").read()[0]) == 4


def test_sensitivity_errors(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec")
    with pytest.raises(ConfigError, match="'uu_co_weigth' is in none of REARM's MMRec configuration files"):
        sensitivity(root, ["baby"], "uu_co_weigth", [0.1], results_dir=tmp_path / "r", progress=None,
                    run_fn=fake_run([]))
    with pytest.raises(ConfigError, match="no default values for 'cl_temperature'"):
        sensitivity(root, ["baby"], "cl_temperature", results_dir=tmp_path / "r", progress=None, run_fn=fake_run([]))
    with pytest.raises(ConfigError, match="repeat one"):
        sensitivity(root, ["baby"], "rank", [2, 2], results_dir=tmp_path / "r", progress=None, run_fn=fake_run([]))
    with pytest.raises(ConfigError, match="set by the runs themselves"):
        sensitivity(root, ["baby"], "epochs", [1, 2], results_dir=tmp_path / "r", progress=None, run_fn=fake_run([]))


def test_plot_without_matplotlib_names_the_package(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(PlotDependencyError, match="needs the Python package 'matplotlib'"):
        plot_sensitivity([], "rank", "recall@20", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------------------------
# checkpoints written by the runner


def test_runner_saves_the_best_validation_epoch_atomically(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec")
    results = tmp_path / "results"
    spec = RunSpec("baby", "REARM", {"curve": [0.1, 0.3, 0.2, 0.25]}, 999, None)
    events = []
    result = launch(spec, root / "src", sys.executable, results / "baby" / "logs", on_event=events.append)
    assert result["status"] == "ok", result.get("error")
    target = results / "baby" / "checkpoints" / f"{spec.key}.pt"
    assert result["checkpoint"] == str(target.resolve()) and result["checkpoint_epoch"] == 1
    assert [e["epoch"] for e in events if e.get("event") == "checkpoint"] == [0, 1]
    payload = load_checkpoint(target)
    assert payload["epoch"] == 1 and payload["run_key"] == spec.key and payload["model"] == "REARM"
    assert payload["valid"] == {"recall@20": 0.3, "ndcg@20": 0.15} and payload["test"] == {"recall@20": 0.15,
                                                                                           "ndcg@20": 0.075}
    assert torch.equal(payload["state_dict"]["weight"], torch.ones(1, 2))          # weights of epoch 1
    assert payload["config"]["curve"] == [0.1, 0.3, 0.2, 0.25] and payload["config"]["seed"] == [999]
    assert payload["dataset_folder"] == str((root / "data" / "baby").resolve())
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]        # no temporary left
    # not for other models, and never with the switch off
    other = results / "baby" / "logs" / "LightGCN-seed1-0123456789abcdef.result.json"
    assert checkpoint_target({"model": "LightGCN", "result_path": str(other)}) == (None, None)
    assert checkpoint_target({"model": "REARM", "result_path": str(other)})[0] == str(
        results / "baby" / "checkpoints" / "0123456789abcdef.pt")


def test_checkpoint_switch_and_explicit_path(monkeypatch, tmp_path):
    result_path = str(tmp_path / "logs" / "REARM-seed1-00aa.result.json")
    assert checkpoint_target({"model": "REARM", "result_path": result_path, "checkpoint_path": ""}) == (None, None)
    assert checkpoint_target({"model": "X", "result_path": result_path, "checkpoint_path": "a.pt"}) == ("a.pt", "00aa")
    monkeypatch.setenv("MMREC_REARM_CHECKPOINTS", "0")
    assert checkpoint_target({"model": "REARM", "result_path": result_path}) == (None, None)


class Tiny:
    """A tiny dataset folder and REARM models on the stand-in host, saved the way the runner saves."""

    def __init__(self, root: Path):
        self.folder = make_demo_dataset(root / "data", name="demo", n_users=40, n_items=29, seed=0,
                                        image_dim=16, text_dim=12, per_user=(8, 12))
        self.splits = read_splits(self.folder)

    def config(self, ablation: str) -> dict:
        return dict(model="REARM", dataset="demo", data_path=str(self.folder.parent) + os.sep,
                    inter_file_name="demo.inter", vision_feature_file="image_feat.npy",
                    text_feature_file="text_feat.npy", rearm_cache_dir=False, embedding_size=8, rank=2,
                    n_layers=2, user_knn_k=10, item_knn_k=5, ablation=ablation, valid_metric="Recall@20",
                    device="cpu")

    def model(self, ablation: str = "none", seed: int = 0) -> REARM:
        coo = self.splits.train.tocoo()
        torch.manual_seed(seed)
        model = REARM(self.config(ablation), ArrayDataLoader(coo.row, coo.col, self.splits.n_users,
                                                             self.splits.n_items))
        return model.eval()

    def save(self, model: REARM, path: Path, ablation: str = "none") -> Path:
        save_checkpoint(str(path), checkpoint_payload(model, self.config(ablation), epoch=2,
                                                      valid={"recall@20": 0.1}, test={"recall@20": 0.05},
                                                      run_key=path.stem))
        return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data = Tiny(root)
    data.after_model = data.model("none", seed=0)
    data.before_model = data.model("wo_ref", seed=1)
    data.after = data.save(data.after_model, root / "ckpt" / "after.pt")
    data.before = data.save(data.before_model, root / "ckpt" / "before.pt", "wo_ref")
    return data


def test_checkpoint_round_trip_rebuilds_the_same_model(tiny):
    payload = load_checkpoint(tiny.after)
    assert payload["format"] == "mmrec-rearm-checkpoint" and payload["version"] == 2
    assert (payload["n_users"], payload["n_items"]) == (tiny.splits.n_users, tiny.splits.n_items) == (40, 28)
    assert payload["config"]["n_uu_layers"] == 1          # resolved preset value written into the config
    assert payload["config"]["device"] == "cpu"
    original = tiny.after_model.state_dict()
    assert set(payload["state_dict"]) == set(original)
    assert all(torch.equal(payload["state_dict"][k], original[k]) for k in original)
    loaded = rebuild_model(tiny.after)
    assert not loaded.model.training and "state_dict" not in loaded.checkpoint
    users = torch.arange(5)
    with torch.no_grad():
        assert torch.allclose(loaded.model.full_sort_predict([users]), tiny.after_model.full_sort_predict([users]))


def test_failed_checkpoint_save_leaves_the_previous_file(tiny, tmp_path):
    target = tmp_path / "c.pt"
    save_checkpoint(str(target), {"format": "x", "value": torch.ones(2)})
    before = target.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(str(target), {"format": "x", "value": lambda: 0})      # cannot be pickled
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an mmrec-rearm checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a checkpoint mmrec-rearm can read"):
        load_checkpoint(tmp_path / "junk.pt")


# ------------------------------------------------------------------------------------------------
# recommend


def test_recommend_excludes_training_items_and_sorts_by_score(tiny, tmp_path):
    out = tmp_path / "recs.csv"
    rows = recommend(tiny.after, [3, 0, 3], top_k=5, out_csv=out)
    with torch.no_grad():
        expected_scores = tiny.after_model.full_sort_predict([torch.tensor([3, 0])]).numpy()
    assert [r[0] for r in rows] == [3] * 5 + [0] * 5 and [r[1] for r in rows] == [1, 2, 3, 4, 5] * 2
    for index, user in enumerate((3, 0)):
        train = set(tiny.splits.train[user].indices)
        mine = [r for r in rows if r[0] == user]
        allowed = [i for i in range(tiny.splits.n_items) if i not in train]
        best = sorted(allowed, key=lambda i: (-expected_scores[index, i], i))[:5]
        assert [r[2] for r in mine] == best and not train & {r[2] for r in mine}
        assert [r[3] for r in mine] == pytest.approx([float(expected_scores[index, i]) for i in best], rel=1e-5)
        assert all(a[3] >= b[3] for a, b in zip(mine, mine[1:]))
    lines = out.read_text().splitlines()
    assert lines[0] == "user,rank,item,score" and len(lines) == 11 and lines[1].startswith(f"3,1,{rows[0][2]},")
    with_train = recommend(tiny.after, [3], top_k=tiny.splits.n_items, exclude_train=False)
    assert len(with_train) == tiny.splits.n_items
    with pytest.raises(ConfigError, match="outside the dataset's users 0..39"):
        recommend(tiny.after, [40])
    with pytest.raises(ConfigError, match="top_k: expected a positive integer"):
        recommend(tiny.after, [1], top_k=0)


def test_recommend_command_line(tiny, tmp_path, capsys):
    users = tmp_path / "users.txt"
    users.write_text("user\n1, 2  # two users\n\n")
    assert read_users_file(users) == [1, 2]
    out = tmp_path / "cli.csv"
    assert cli_main(["recommend", "--checkpoint", str(tiny.after), "--users-file", str(users), "--top-k", "3",
                     "--out", str(out)]) == 0
    assert [line.split(",")[:3] for line in out.read_text().splitlines()[1:]] == [
        [str(r[0]), str(r[1]), str(r[2])] for r in recommend(tiny.after, [1, 2], top_k=3)]
    assert cli_main(["recommend", "--checkpoint", str(tmp_path / "nope.pt"), "--users", "1"]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# heatmap: Fig. 5


def test_heatmap_difference_matrix_marks_and_png(tiny, tmp_path):
    result = heatmap(tiny.after, tiny.before, tmp_path / "fig5.png", n_users=6, n_items=8, seed=3,
                     plot=HAVE_MATPLOTLIB)
    data = result.data
    assert data.difference.shape == (6, 8) and data.labels == ("w/o ref", "REARM")
    assert list(data.users) == sorted(data.users) and list(data.items) == sorted(data.items)
    assert all(tiny.splits.test[u].nnz > 0 for u in data.users)          # sampled among users with a test item
    train = {(u, i) for u, i in zip(*tiny.splits.train.nonzero())}
    test = {(u, i) for u, i in zip(*tiny.splits.test.nonzero())}
    for r, u in enumerate(data.users):
        for c, i in enumerate(data.items):
            assert data.train[r, c] == ((u, i) in train) and data.test[r, c] == ((u, i) in test)
    assert data.test.any() and data.train.any()
    users = torch.as_tensor(data.users)
    with torch.no_grad():
        after = torch.sigmoid(tiny.after_model.full_sort_predict([users]))[:, data.items].double().numpy()
        before = torch.sigmoid(tiny.before_model.full_sort_predict([users]))[:, data.items].double().numpy()
    np.testing.assert_allclose(data.difference, after - before, atol=1e-6)
    if HAVE_MATPLOTLIB:
        assert result.files["png"].read_bytes()[:8] == PNG_MAGIC
    rows = list(csv.DictReader(open(result.files["csv"])))
    assert len(rows) == 48 and sum(int(r["train"]) for r in rows) == int(data.train.sum())
    explicit = sample_pairs(tiny.splits, users=[5, 1, 5], items=[3, 2])
    assert [list(a) for a in explicit] == [[1, 5], [2, 3]]
    with pytest.raises(ConfigError, match="id 99 is outside 0..27"):
        sample_pairs(tiny.splits, users=[1], items=[99])


def test_heatmap_finds_the_full_and_wo_ref_checkpoints_in_the_store(tiny, tmp_path):
    store = RunStore(tmp_path, "demo")
    for seed, ablation, path in ((1000, None, tiny.after), (999, "wo_ref", tiny.before), (999, None, tiny.after),
                                 (1000, "wo_meta", tiny.before)):
        config = {"n_layers": 2} if ablation is None else {"n_layers": 2, "ablation": ablation}
        store.append({"schema": 1, "key": f"{seed}{ablation}", "status": "ok", "dataset": "demo", "model": "REARM",
                      "config_id": f"{ablation}", "seed": seed, "epochs": 5, "config": config,
                      "valid": {"recall@20": 0.1}, "test": {"recall@20": 0.1}, "checkpoint": str(path)})
    assert find_checkpoint_pair(tmp_path, "demo") == (tiny.after, tiny.before)
    with pytest.raises(CheckpointError, match="no two REARM runs with checkpoints that differ only in ablation"):
        find_checkpoint_pair(tmp_path, "demo", seed=1000)


# ------------------------------------------------------------------------------------------------
# optional: a real REARM run in a copy of a real MMRec checkout; its checkpoint reproduces MMRec's metric

def _test_recall_at_20(loaded) -> float:
    """MMRec's test recall@20 of a rebuilt model: training items masked, mean over test users."""
    from mmrec_rearm.experiments.checkpoints import scores

    train, test = loaded.splits.train, loaded.splits.test
    users = np.flatnonzero((np.diff(test.indptr) > 0) & (np.diff(train.indptr) > 0))
    values = scores(loaded.model, users)
    recall = []
    for row, user in enumerate(users):
        values[row, train.indices[train.indptr[user]:train.indptr[user + 1]]] = -1e10
        truth = set(test.indices[test.indptr[user]:test.indptr[user + 1]])
        top = np.argsort(-values[row], kind="stable")[:20]
        recall.append(sum(int(i) in truth for i in top) / len(truth))
    return round(float(np.mean(recall)), 4)


def test_real_mmrec_rearm_checkpoint_reproduces_mmrecs_test_metric(tmp_path):
    checkout_src, mmrec_python = real_mmrec_runner_or_skip("REAL-MMREC TEST")
    from mmrec_rearm.install import install

    clone = tmp_path / "MMRec"
    shutil.copytree(checkout_src, clone / "src", ignore=shutil.ignore_patterns("log", "__pycache__", "saved"))
    install(clone, report=lambda _line: None)
    make_demo_dataset(clone / "data", "demo", n_users=120, n_items=80, seed=0, image_dim=16, text_dim=12)
    report = ablate(clone, "demo", epochs=2, results_dir=tmp_path / "results", python=mmrec_python,
                    parts=["table3"], variants=["full"], overrides=["use_gpu=False", "embedding_size=16"],
                    progress=None, timeout_s=240)
    (record,) = RunStore(tmp_path / "results", "demo").read()[0]
    assert record["status"] == "ok", record.get("message")
    assert record["checkpoint_epoch"] == record["best_epoch"] and report.failed == 0
    # REARM's loss is a tuple, whose MMRec log line carries no time: the runner times the epoch itself
    assert [entry["epoch"] for entry in record["history"]] == [0, 1]
    assert all(entry["train_s"] is not None and entry["train_s"] > 0 for entry in record["history"])
    loaded = rebuild_model(record["checkpoint"])       # refuses unless MMRec's data has the same fingerprint
    assert len(loaded.checkpoint["data_fingerprint"]) == 64
    assert loaded.checkpoint["test"] == record["test"] and loaded.checkpoint["epoch"] == record["best_epoch"]
    assert _test_recall_at_20(loaded) == record["test"]["recall@20"]
