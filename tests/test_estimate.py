"""``mmrec-rearm estimate``: settings from a dataset folder or an MMRec checkout, report, GPU advice."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmrec_rearm import costmodel as cm
from mmrec_rearm.cli import main
from mmrec_rearm.errors import ConfigError
from mmrec_rearm.estimate import estimate, parse_size
from mmrec_rearm.synth import make_demo_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("estimate")
    make_demo_dataset(root, name="demo", n_users=300, n_items=120, seed=0)
    return root / "demo"


def test_parse_size():
    assert parse_size("24GB") == parse_size("24GiB") == parse_size("24g") == parse_size("24") == 24 * 2 ** 30
    assert parse_size("512MB") == 512 * 2 ** 20
    with pytest.raises(ConfigError, match="--gpu-memory 'lots'"):
        parse_size("lots")


def test_folder_report_counts_the_dataset_and_the_model(folder, capsys):
    import mmrec_rearm.data as data

    parsed = data.read_interactions(folder / "demo.inter")
    train = parsed.labels == 0
    assert main(["estimate", str(folder)]) == 0
    out = capsys.readouterr().out
    n_users, n_items = int(parsed.users.max()) + 1, int(parsed.items.max()) + 1
    assert f"users={n_users:,} items={n_items:,} train={int(train.sum()):,}" in out
    widths = tuple(np.load(folder / f"{m}_feat.npy", mmap_mode="r").shape[1] for m in ("image", "text"))
    expected = cm.parameter_counts(cm.DatasetShape(n_users, n_items, int(train.sum()), widths), cm.ModelShape())
    assert f"parameters: {expected['total']:,}" in out
    for name in ("user_cooccurrence", "item_cooccurrence", "user_interest", "item_semantic", "whole build"):
        assert name in out
    assert "train_batch_size 2048" in out  # MMRec's default without a checkout


def test_set_overrides_model_and_graph_keys(folder):
    base = estimate(folder=str(folder))
    changed = estimate(folder=str(folder), overrides=["train_raw_features=false", "train_batch_size=256",
                                                      "uu_co_weight=1.0", "embedding_size=32"])
    assert changed["parameters"]["trainable"] < base["parameters"]["trainable"]
    assert changed["model"].batch_size == 256 and changed["model"].embedding_size == 32
    assert "user_interest" not in changed["graphs"] and "user_interest" in base["graphs"]


def test_gpu_advice(folder, capsys):
    assert main(["estimate", str(folder), "--gpu-memory", "80GB"]) == 0
    assert "fits: predicted GPU peak" in capsys.readouterr().out
    assert main(["estimate", str(folder), "--gpu-memory", "1MB"]) == 0
    out = capsys.readouterr().out
    assert "does not fit" in out and "Use a larger GPU" in out


def test_advice_names_the_setting_that_fits():
    from mmrec_rearm.estimate import _gpu_advice

    data = cm.DatasetShape(n_users=200_000, n_items=50_000, n_train=2_000_000, widths=(4096, 384))
    model = cm.ModelShape()
    with_raw = cm.training_memory(data, model)["peak"]
    frozen = cm.training_memory(data, cm.ModelShape(train_raw_features=False))["peak"]
    advice = _gpu_advice(data, model, (with_raw + frozen) / 2)
    assert advice[0].startswith("does not fit") and "train_raw_features: false" in advice[1]
    small = cm.training_memory(data, cm.ModelShape(train_raw_features=False), batch_size=512)["peak"]
    advice = _gpu_advice(data, cm.ModelShape(train_raw_features=False), (small + frozen) / 2)
    assert "train_batch_size: 512" in advice[1] or "train_batch_size: 1024" in advice[1]


def _fake_checkout(root: Path, folder: Path) -> Path:
    """The parts of an MMRec checkout that estimate reads, with REARM installed."""
    src = root / "MMRec" / "src"
    (src / "utils").mkdir(parents=True)
    (src / "utils" / "quick_start.py").write_text("")
    (src / "configs" / "model").mkdir(parents=True)
    (src / "configs" / "dataset").mkdir(parents=True)
    (src / "configs" / "overall.yaml").write_text("data_path: ../data/\ntrain_batch_size: 512\neval_batch_size: 1024\n")
    shutil.copy(REPO / "configs" / "model" / "REARM.yaml", src / "configs" / "model" / "REARM.yaml")
    (src / "configs" / "dataset" / "demo.yaml").write_text(
        "vision_feature_file: image_feat.npy\ntext_feature_file: text_feat.npy\nuser_knn_k: 7\n")
    shutil.copytree(folder, root / "MMRec" / "data" / "demo")
    return root / "MMRec"


def test_mmrec_checkout_settings(tmp_path, folder, capsys):
    checkout = _fake_checkout(tmp_path, folder)
    result = estimate(mmrec=str(checkout), dataset="demo")
    assert result["model"].batch_size == 512 and result["model"].eval_batch_size == 1024
    assert result["params"].user_knn_k == 7  # the dataset YAML beats the preset
    assert main(["estimate", "--mmrec", str(checkout), "-d", "demo"]) == 0
    assert "train_batch_size 512" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["estimate"], "needs a dataset folder"),
    (["estimate", "--mmrec", "/nonexistent-mmrec"], "needs -d DATASET"),
    (["estimate", "/nonexistent-dataset"], "dataset folder not found"),
    (["estimate", "--mmrec", "/nonexistent-mmrec", "-d", "x"], "not an MMRec checkout"),
    (["estimate", "/some-folder", "--mmrec", "/nonexistent-mmrec", "-d", "x"], "not both"),
    (["estimate", "/some-folder", "--feature", "image_feat.npy"], "--feature 'image_feat.npy'"),
])
def test_errors_are_named(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_modal_weights_that_are_not_a_list_are_a_named_error(folder, capsys):
    # "0.5,0.5" is a YAML string, not a list: it used to end in a ValueError traceback
    assert main(["estimate", str(folder), "--set", "u_modal_weights=0.5,0.5"]) == 2
    err = capsys.readouterr().err
    assert "u_modal_weights='0.5,0.5': expected a list of numbers" in err and "Traceback" not in err


def test_estimate_imports_neither_torch_nor_mmrec(folder):
    code = ("import sys; from mmrec_rearm.estimate import estimate; estimate(folder=sys.argv[1]); "
            "assert 'torch' not in sys.modules, 'torch'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_estimate_from_a_checkout_imports_neither_torch_nor_mmrec(tmp_path, folder):
    checkout = _fake_checkout(tmp_path, folder)
    code = ("import sys; from mmrec_rearm.estimate import estimate; estimate(mmrec=sys.argv[1], dataset='demo'); "
            "assert 'torch' not in sys.modules, 'torch'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(checkout)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
