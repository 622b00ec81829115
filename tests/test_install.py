"""install / uninstall / quickstart into an MMRec checkout.

The pure file logic runs on a minimal fake MMRec tree (a git repository built in tmp_path). The
tests marked "real MMRec" work on a throw-away `git clone` of a real checkout found at $MMREC_SRC
(the checkout or its src/) or ~/MMRec, and are skipped, saying how to enable them, without one.
"""
from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmrec_rearm import install as inst
from mmrec_rearm import quickstart as qs
from mmrec_rearm.errors import InstallError

from conftest import all_files, mmrec_runtime_problem, porcelain

def expected_contents() -> dict:
    """Relative path -> exact content install must write, derived from the package's configs."""
    configs = inst.package_configs_dir()
    expected = {"src/models/rearm.py": inst.MARKER + "\n" + "from mmrec_rearm.model.rearm import REARM  # noqa: F401\n",
                "src/models/micro.py": inst.MARKER + "\n" + "from mmrec_rearm.baselines.micro import MICRO  # noqa: F401\n",
                "src/models/diffmm.py": inst.MARKER + "\n" + "from mmrec_rearm.baselines.diffmm import DiffMM  # noqa: F401\n",
                "src/models/apegnn.py": inst.MARKER + "\n" + "from mmrec_rearm.baselines.apegnn import ApeGNN  # noqa: F401\n",
                "src/models/mgdn.py": inst.MARKER + "\n" + "from mmrec_rearm.baselines.mgdn import MGDN  # noqa: F401\n",
                "src/models/miggt.py": inst.MARKER + "\n" + "from mmrec_rearm.baselines.miggt import MIGGT  # noqa: F401\n"}
    for sub, dest in (("model", "src/configs/model"), ("dataset", "src/configs/dataset")):
        for yaml_file in sorted((configs / sub).glob("*.yaml")):
            expected[f"{dest}/{yaml_file.name}"] = inst.MARKER + "\n" + yaml_file.read_text()
    return expected


# --------------------------------------------------------------------------------------------
# install


def test_install_writes_exactly_the_shim_and_our_yaml_files(fake_mmrec):
    before = all_files(fake_mmrec)
    lines = []
    paths = inst.install(fake_mmrec, report=lines.append)
    expected = expected_contents()
    assert "src/configs/model/REARM.yaml" in expected
    assert all_files(fake_mmrec) - before == set(expected) | {inst.LEDGER_NAME}
    assert sorted(p.relative_to(fake_mmrec).as_posix() for p in paths) == sorted(expected)
    for rel, text in expected.items():
        assert (fake_mmrec / rel).read_text() == text
    shim = (fake_mmrec / "src/models/rearm.py").read_text().splitlines()
    assert shim == [inst.MARKER, "from mmrec_rearm.model.rearm import REARM  # noqa: F401"]
    assert [line.split()[0] for line in lines] == ["wrote"] * len(expected)


def test_install_is_idempotent_and_reports_unchanged(fake_mmrec):
    first = inst.install(fake_mmrec, report=None)
    stamps = {p: p.stat().st_mtime_ns for p in first}
    lines = []
    second = inst.install(fake_mmrec, report=lines.append)
    assert second == first
    assert {p: p.stat().st_mtime_ns for p in second} == stamps  # not even rewritten
    assert lines == [f"unchanged {p}" for p in first]


def test_install_replaces_an_outdated_file_of_ours(fake_mmrec):
    shim = fake_mmrec / "src/models/rearm.py"
    inst.place_files(fake_mmrec, {shim: inst.MARKER + "\nold content\n"}, report=None)  # an older version's install
    lines = []
    inst.install(fake_mmrec, report=lines.append)
    assert shim.read_text() == expected_contents()["src/models/rearm.py"]
    assert f"updated   {shim}" in lines


def test_install_accepts_the_src_folder(fake_mmrec):
    paths = inst.install(fake_mmrec / "src", report=None)
    assert fake_mmrec / "src/models/rearm.py" in paths


@pytest.mark.parametrize("rel", ["src/models/rearm.py", "src/configs/model/REARM.yaml"])
def test_install_refuses_to_overwrite_a_foreign_file(fake_mmrec, rel):
    foreign = fake_mmrec / rel
    foreign.write_text("# someone else's file\n")
    before = all_files(fake_mmrec)
    with pytest.raises(InstallError, match=re.escape(f"refusing to overwrite {foreign}")):
        inst.install(fake_mmrec, report=None)
    assert foreign.read_text() == "# someone else's file\n"
    assert all_files(fake_mmrec) == before  # nothing else written either


def test_marker_must_be_the_first_line(fake_mmrec):
    foreign = fake_mmrec / "src/models/rearm.py"
    foreign.write_text("import os\n" + inst.MARKER + "\n")
    with pytest.raises(InstallError, match="not written by mmrec-rearm"):
        inst.install(fake_mmrec, report=None)


def test_install_refuses_a_folder_that_is_not_mmrec(tmp_path):
    with pytest.raises(InstallError, match=r"is not an MMRec checkout: missing src/main.py, src/models/, "
                                           r"src/configs/model/, src/common/abstract_recommender.py"):
        inst.install(tmp_path, report=None)
    assert list(tmp_path.iterdir()) == []


def test_install_names_the_one_missing_part(fake_mmrec):
    (fake_mmrec / "src/common/abstract_recommender.py").unlink()
    with pytest.raises(InstallError, match=r"missing src/common/abstract_recommender\.py;"):
        inst.install(fake_mmrec, report=None)


def test_install_refuses_a_missing_folder(tmp_path):
    with pytest.raises(InstallError, match=re.escape(f"{tmp_path / 'nope'}: no such folder")):
        inst.install(tmp_path / "nope", report=None)


# --------------------------------------------------------------------------------------------
# uninstall


def test_uninstall_restores_git_status(fake_mmrec):
    (fake_mmrec / "src/models/mine.py").write_text("# the user's own untracked model\n")
    before = porcelain(fake_mmrec)
    inst.install(fake_mmrec, report=None)
    assert porcelain(fake_mmrec) != before
    pycache = fake_mmrec / "src/models/__pycache__"
    pycache.mkdir()
    compiled = {pycache / "rearm.cpython-311.pyc", pycache / "miggt.cpython-311.pyc"}  # every shim's
    for pyc in compiled:
        pyc.write_bytes(b"\0")
    lines = []
    removed = inst.uninstall(fake_mmrec, report=lines.append)
    assert porcelain(fake_mmrec) == before
    assert set(removed) == {fake_mmrec / rel for rel in expected_contents()} | compiled
    assert (fake_mmrec / "src/models/mine.py").is_file()
    assert len(lines) == len(removed)


def test_uninstall_keeps_files_not_in_the_ledger(fake_mmrec):
    foreign = fake_mmrec / "src/configs/model/REARM.yaml"
    foreign.write_text(inst.MARKER + "\nembedding_size: 64\n")     # even with our first line
    lines = []
    assert inst.uninstall(fake_mmrec, report=lines.append) == []
    assert foreign.read_text() == inst.MARKER + "\nembedding_size: 64\n"
    assert lines[0].startswith(f"nothing of mmrec-rearm recorded in {fake_mmrec.resolve()} (no {inst.LEDGER_NAME})")


def test_uninstall_removes_only_recorded_dataset_folders(fake_mmrec):
    ours = fake_mmrec / "data/demo"
    inst.place_files(fake_mmrec, {ours / "demo.inter": "x\n"}, folders=[ours], report=None)
    theirs = fake_mmrec / "data/baby"
    theirs.mkdir()
    (theirs / "baby.inter").write_text("x\n")
    assert inst.uninstall(fake_mmrec, report=None) == [ours]
    assert not ours.exists() and (theirs / "baby.inter").is_file()


# --------------------------------------------------------------------------------------------
# quickstart (pure parts)


FINAL_BLOCK = (
    "20 Nov 10:00    INFO \n\n█████████████ BEST ████████████████\n"
    "20 Nov 10:00    INFO \tParameters: ['seed', 'n_layers']=(999, 2),\n"
    "Valid: recall@10: 0.1075    recall@20: 0.1692    ndcg@20: 0.0865    ,\n"
    "Test: recall@10: 0.0767    recall@20: 0.1767    ndcg@20: 0.0726    \n\n\n"
)


def test_parse_final_metrics_reads_the_last_best_block():
    earlier = FINAL_BLOCK.replace("0.1692", "0.9999")
    valid, test, params = qs.parse_final_metrics("noise\n" + earlier + "more\n" + FINAL_BLOCK)
    assert valid == {"recall@10": 0.1075, "recall@20": 0.1692, "ndcg@20": 0.0865}
    assert test == {"recall@10": 0.0767, "recall@20": 0.1767, "ndcg@20": 0.0726}
    assert params == "['seed', 'n_layers']=(999, 2)"


def test_parse_final_metrics_without_best_block():
    with pytest.raises(InstallError, match="no final 'BEST' block"):
        qs.parse_final_metrics("epoch 0 training [time: 0.1s, train loss: 1.0]\n")


def test_quickstart_failure_raises_with_the_output_tail(fake_mmrec):
    # The fake tree has no utils/quick_start.py, so MMRec's import fails in the subprocess.
    out = io.StringIO()
    with pytest.raises(InstallError, match=r"(?s)quick_start failed \(exit status 1\).*ModuleNotFoundError"):
        qs.quickstart(fake_mmrec, epochs=1, model="LightGCN", n_users=60, n_items=40, stream=out,
                        report=None)
    assert "ModuleNotFoundError" in out.getvalue()  # streamed as well
    folder = fake_mmrec / "data/rearm_demo"
    assert (folder / "rearm_demo.inter").is_file()
    yaml_text = (fake_mmrec / "src/configs/dataset/rearm_demo.yaml").read_text()
    assert yaml_text.startswith(inst.MARKER + "\n") and "inter_file_name: 'rearm_demo.inter'" in yaml_text
    before = porcelain(fake_mmrec)
    inst.uninstall(fake_mmrec, report=None)
    assert porcelain(fake_mmrec) == "" != before


def test_quickstart_refuses_a_foreign_dataset_folder(fake_mmrec):
    foreign = fake_mmrec / "data/rearm_demo"
    foreign.mkdir()
    (foreign / "rearm_demo.inter").write_text("mine\n")
    with pytest.raises(InstallError, match=re.escape(f"refusing to overwrite {foreign} (a folder mmrec-rearm did not create)")):
        qs.quickstart(fake_mmrec, epochs=1, model="LightGCN", report=None, stream=io.StringIO())
    assert (foreign / "rearm_demo.inter").read_text() == "mine\n"


def test_quickstart_rejects_zero_epochs(fake_mmrec):
    with pytest.raises(InstallError, match="epochs=0: must be >= 1"):
        qs.quickstart(fake_mmrec, epochs=0, report=None)


# --------------------------------------------------------------------------------------------
# real MMRec (temporary clone)


def test_real_mmrec_install_uninstall_roundtrip(real_mmrec):
    before = porcelain(real_mmrec)
    paths = inst.install(real_mmrec, report=None)
    assert {p.relative_to(real_mmrec).as_posix() for p in paths} == set(expected_contents())
    assert porcelain(real_mmrec) != before
    inst.uninstall(real_mmrec, report=None)
    assert porcelain(real_mmrec) == before


def test_real_mmrec_quickstart_plumbing_with_lightgcn(real_mmrec):
    """One LightGCN epoch through MMRec's own quick_start on a tiny demo dataset (about 6 s)."""
    problem = mmrec_runtime_problem()
    if problem:
        pytest.skip(f"QUICKSTART TEST SKIPPED: {sys.executable} cannot run MMRec ({problem}); run the "
                    "tests with an interpreter that has MMRec's pins (numpy<1.24, scipy<1.12, pandas, "
                    "torchvision, matplotlib, lmdb), e.g. .venv/bin/python from scripts/setup.sh")
    before = porcelain(real_mmrec)
    out = io.StringIO()
    result = qs.quickstart(real_mmrec, epochs=1, model="LightGCN", n_users=200, n_items=150,
                             config={"use_gpu": False}, stream=out, report=None, timeout=120)
    text = out.getvalue()
    assert "epoch 0 training" in text and "epoch 1 training" not in text
    assert text.count("=========1/1: Parameters:") == 1  # the grid was cut to one point
    keys = {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map") for k in (5, 10, 20, 50)}
    assert set(result.valid) == keys and set(result.test) == keys
    assert all(0.0 <= v <= 1.0 for v in [*result.valid.values(), *result.test.values()])
    assert result.valid["recall@50"] >= result.valid["recall@20"] >= result.valid["recall@10"]
    assert result.log_file is not None and result.log_file.is_file()
    assert result.summary().splitlines()[1].startswith("  valid recall@10=")
    assert text.rstrip().endswith(result.summary().splitlines()[-1])
    inst.uninstall(real_mmrec, report=None)
    assert porcelain(real_mmrec) == before  # logs live under src/log/, ignored by MMRec's git
