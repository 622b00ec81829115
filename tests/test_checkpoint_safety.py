"""Checkpoints cannot run code and know their data.

Some tests here craft malicious files on purpose (a pickle that runs a shell command when it is
unpickled the unsafe way); each proves the loader refuses them and that the command never ran.
"""
from __future__ import annotations

import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mmrec_rearm.errors import CheckpointError, DatasetError  # noqa: E402
from mmrec_rearm.experiments.checkpoints import load_checkpoint, read_splits, rebuild_model  # noqa: E402
from mmrec_rearm.experiments.heatmap import heatmap  # noqa: E402
from mmrec_rearm.experiments.recommend import recommend  # noqa: E402
from mmrec_rearm.experiments.runner_checkpoint import checkpoint_payload, save_checkpoint  # noqa: E402
from mmrec_rearm.host import ArrayDataLoader  # noqa: E402
from mmrec_rearm.model.rearm import REARM  # noqa: E402
from mmrec_rearm.synth import make_demo_dataset  # noqa: E402
from conftest import PickleBomb, run_cli  # noqa: E402


def crafted_file(path: Path, marker: Path) -> Path:
    """A file whose weights-only load fails with TypeError (BUILD of an OrderedDict with a state
    that dict.update rejects, which the unrestricted unpickler accepts) and that then calls
    os.system("touch <marker>"): the shape of file that defeated a retry without weights_only."""
    command = f"touch {marker}".encode()
    path.write_bytes(b"\x80\x02" + b"ccollections\nOrderedDict\n)R" + b"N}X\x01\x00\x00\x00aK\x01s\x86b" + b"0"
                     + b"cos\nsystem\nX" + len(command).to_bytes(4, "little") + command + b"\x85R.")
    return path


# --------------------------------------------------------------------------------------------
# defect 3: a crafted checkpoint can run code


def test_the_crafted_file_really_runs_code_when_loaded_unsafely(tmp_path):
    """The proof that the file used below is dangerous: unpickled the unsafe way, the command runs."""
    marker = tmp_path / "PWNED"
    evil = crafted_file(tmp_path / "evil.pt", marker)
    with pytest.raises(TypeError):
        torch.load(evil, map_location="cpu", weights_only=True)
    assert not marker.exists()
    pickle.loads(evil.read_bytes())  # noqa: S301 - deliberately unsafe, to show what the file does
    assert marker.exists()


def test_a_crafted_checkpoint_cannot_run_code_even_when_torch_is_told_to_allow_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "PWNED"
    evil = crafted_file(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match=r"evil\.pt: not a checkpoint mmrec-rearm can read \(TypeError"):
        load_checkpoint(evil)
    code, out, err = run_cli(capsys, "recommend", "--checkpoint", evil, "--users", "1")
    assert code == 2 and out == "" and err.startswith(f"error: {evil}: not a checkpoint")
    assert not marker.exists()
    assert "weights_only=False" not in err and "trust" not in err


def test_a_pickled_object_with_code_is_refused_without_unsafe_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "PWNED"
    torch.save({"format": "mmrec-rearm-checkpoint", "version": 2, "state_dict": PickleBomb(marker)}, tmp_path / "e.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "e.pt")
    assert "UnpicklingError" in str(info.value) and "weights_only" not in str(info.value)
    assert not marker.exists()


def test_a_torch_without_weights_only_is_refused_before_reading(tmp_path, monkeypatch):
    calls = []

    def old_load(f, map_location=None, pickle_module=None):   # torch < 1.13's signature
        calls.append(f)

    monkeypatch.setattr(torch, "load", old_load)
    (tmp_path / "c.pt").write_bytes(b"anything")
    with pytest.raises(CheckpointError, match=r"c\.pt: torch .* cannot load a file as plain data.*torch >= 1\.13"):
        load_checkpoint(tmp_path / "c.pt")
    assert calls == []


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("data_fingerprint"), "lacks field(s) data_fingerprint"),
    (lambda p: p.update(version=99), "checkpoint version 99 is newer"),
    (lambda p: p.update(kind="training-state"), "field 'kind' is 'training-state'"),
    (lambda p: p.update(valid={"recall@20": "high"}), "field 'valid' holds values that are not numbers"),
    (lambda p: p.update(data_fingerprint="abc"), "not a sha256 hex digest"),
])
def test_a_loaded_payload_is_checked_against_the_format(tiny, tmp_path, change, message):
    payload = torch.load(tiny.checkpoint, map_location="cpu", weights_only=True)
    change(payload)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=re_escape(message)):
        load_checkpoint(tmp_path / "bad.pt")


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


# --------------------------------------------------------------------------------------------
# defect 4: a checkpoint knows the data it was trained on


class Tiny:
    def __init__(self, root: Path):
        self.folder = make_demo_dataset(root / "data", name="demo", n_users=40, n_items=29, seed=0,
                                        image_dim=16, text_dim=12, per_user=(8, 12))
        splits = read_splits(self.folder)
        config = dict(model="REARM", dataset="demo", data_path=str(self.folder.parent) + os.sep,
                      inter_file_name="demo.inter", vision_feature_file="image_feat.npy",
                      text_feature_file="text_feat.npy", rearm_cache_dir=False, embedding_size=8, rank=2,
                      n_layers=2, user_knn_k=10, item_knn_k=5, valid_metric="Recall@20", device="cpu")
        coo = splits.train.tocoo()
        torch.manual_seed(0)
        self.model = REARM(config, ArrayDataLoader(coo.row, coo.col, splits.n_users, splits.n_items)).eval()
        self.checkpoint = root / "ckpt" / "after.pt"
        save_checkpoint(str(self.checkpoint), checkpoint_payload(self.model, config, epoch=2, valid={"recall@20": 0.1},
                                                                 test={"recall@20": 0.05}, run_key="after"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return Tiny(tmp_path_factory.mktemp("tiny"))


def permuted_copy(folder: Path, target: Path, seed: int = 1) -> Path:
    """The dataset with its user ids permuted: same counts, same features, other people."""
    shutil.copytree(folder, target)
    lines = (target / "demo.inter").read_text().splitlines()
    header, rows = lines[0], [line.split("\t") for line in lines[1:]]
    n_users = max(int(r[0]) for r in rows) + 1
    perm = np.random.default_rng(seed).permutation(n_users)
    (target / "demo.inter").write_text("\n".join([header] + ["\t".join([str(perm[int(r[0])])] + r[1:]) for r in rows])
                                       + "\n")
    return target


def test_the_checkpoint_records_the_fingerprint_of_its_training_data(tiny):
    from mmrec_rearm.cache import data_fingerprint
    from mmrec_rearm.data import read_dataset

    payload = load_checkpoint(tiny.checkpoint)
    assert payload["version"] == 2 and payload["kind"] == "best-validation"
    assert payload["data_fingerprint"] == tiny.model.data_fingerprint == data_fingerprint(read_dataset(tiny.folder))
    assert rebuild_model(tiny.checkpoint).model.data_fingerprint == payload["data_fingerprint"]


def test_recommend_refuses_a_dataset_with_permuted_user_ids(tiny, tmp_path, capsys, caplog):
    other = permuted_copy(tiny.folder, tmp_path / "demo")
    assert (read_splits(other).n_users, read_splits(other).n_items) == (40, 28)    # the same counts
    with pytest.raises(DatasetError) as info:
        recommend(tiny.checkpoint, [1, 2], data_dir=other)
    message = str(info.value)
    stored = load_checkpoint(tiny.checkpoint)["data_fingerprint"]
    assert str(other) in message and str(tiny.folder) in message and stored[:16] in message
    assert "--allow-other-data" in message
    code, out, err = run_cli(capsys, "recommend", "--checkpoint", tiny.checkpoint, "--users", "1", "--data-dir", other)
    assert code == 2 and out == "" and err.startswith(f"error: {other} (data fingerprint ")
    with caplog.at_level(logging.WARNING, logger="mmrec_rearm.experiments.checkpoints"):
        rows = recommend(tiny.checkpoint, [1, 2], top_k=3, data_dir=other, allow_other_data=True)
    assert len(rows) == 6 and any("using it anyway" in r.getMessage() for r in caplog.records)
    assert run_cli(capsys, "recommend", "--checkpoint", tiny.checkpoint, "--users", "1", "--data-dir", other,
               "--allow-other-data")[0] == 0


def test_heatmap_refuses_other_data_too(tiny, tmp_path):
    other = permuted_copy(tiny.folder, tmp_path / "demo")
    with pytest.raises(DatasetError, match="is not the data the checkpoint"):
        heatmap(tiny.checkpoint, tiny.checkpoint, tmp_path / "h.png", data_dir=other, plot=False)
    assert not (tmp_path / "h.csv").exists()


def test_a_checkpoint_without_fingerprint_needs_the_explicit_override(tiny, tmp_path):
    payload = torch.load(tiny.checkpoint, map_location="cpu", weights_only=True)
    for field in ("data_fingerprint", "kind"):
        payload.pop(field)
    payload["version"] = 1                                   # as the first release wrote them
    torch.save(payload, tmp_path / "v1.pt")
    with pytest.raises(DatasetError, match="records no data fingerprint"):
        recommend(tmp_path / "v1.pt", [1])
    assert len(recommend(tmp_path / "v1.pt", [1], top_k=2, allow_other_data=True)) == 2
