"""The install ledger: install / uninstall / quickstart never lose a user's file.

Each test drives the command line the way the README shows it, on a fake MMRec tree (a git
repository in tmp_path) or, for the acceptance test, on a temporary `git clone` of a real MMRec
checkout ($MMREC_SRC or ~/MMRec; skipped, saying how to enable it, without one).
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest



from conftest import all_files, porcelain, run_cli

REARM_YAML = "src/configs/model/REARM.yaml"
DATASET_YAML = "src/configs/dataset/tiktok.yaml"   # the dataset YAML this package ships


def snapshot(root: Path, rels) -> dict:
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in rels}


def user_files(root: Path, base: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def place_demo(capsys, root: Path, through_quickstart: bool = False) -> Path:
    """Install and write the demo dataset as `quickstart` does (``through_quickstart``: by running it;
    the fake tree has no MMRec to train with, so the run fails after install and the demo data are
    in place)."""
    from mmrec_rearm.quickstart import place_demo_dataset

    if through_quickstart:
        code, _, err = run_cli(capsys, "quickstart", "--mmrec", root, "--epochs", "1")
        assert code == 2 and "quick_start failed" in err
    else:
        assert run_cli(capsys, "install", root)[0] == 0
        place_demo_dataset(root, n_users=400, n_items=300, report=None)
    folder = root / "data" / "rearm_demo"
    assert (folder / "rearm_demo.inter").is_file()
    return folder


# --------------------------------------------------------------------------------------------
# defect 1: uninstall deletes user work


def test_uninstall_keeps_a_file_the_user_edited(fake_mmrec, capsys):
    assert run_cli(capsys, "install", fake_mmrec)[0] == 0
    yaml = fake_mmrec / REARM_YAML
    with open(yaml, "a") as handle:
        handle.write("my: 1\n")
    edited = yaml.read_bytes()
    code, out, _ = run_cli(capsys, "uninstall", fake_mmrec)
    assert code == 0
    assert yaml.read_bytes() == edited
    kept = [line for line in out.splitlines() if str(yaml) in line]
    assert len(kept) == 1 and kept[0].startswith("kept") and "changed since mmrec-rearm wrote it" in kept[0]
    assert not (fake_mmrec / "src/models/rearm.py").exists()          # what was unchanged is gone


def test_uninstall_never_removes_copies_of_our_files(fake_mmrec, capsys):
    assert run_cli(capsys, "install", fake_mmrec)[0] == 0
    copies = {"src/configs/model/REARM_mine.yaml": REARM_YAML, "src/configs/dataset/mine.yaml": DATASET_YAML,
              "src/models/rearm_copy.py": "src/models/rearm.py"}
    for copy, original in copies.items():
        shutil.copy(fake_mmrec / original, fake_mmrec / copy)
    before = snapshot(fake_mmrec, copies)
    assert run_cli(capsys, "uninstall", fake_mmrec)[0] == 0
    assert snapshot(fake_mmrec, copies) == before
    assert not any((fake_mmrec / original).exists() for original in copies.values())


def test_uninstall_never_touches_a_copied_or_extended_demo_dataset(fake_mmrec, capsys):
    demo = place_demo(capsys, fake_mmrec, through_quickstart=True)
    mine = fake_mmrec / "data" / "my_dataset"
    shutil.copytree(demo, mine)
    (mine / "rearm_demo.inter").rename(mine / "my_dataset.inter")
    with open(mine / "my_dataset.inter", "a") as handle:
        handle.write("0\t1\t1\t1500000000\t0\n")
    (demo / "notes.txt").write_text("which seeds I tried\n")
    before = {**user_files(fake_mmrec, mine), **user_files(fake_mmrec, demo)}
    code, out, _ = run_cli(capsys, "uninstall", fake_mmrec)
    assert code == 0
    assert {**user_files(fake_mmrec, mine), **user_files(fake_mmrec, demo)} == before
    assert f"kept      {demo}/" in out and "notes.txt" in out


def test_uninstall_removes_the_untouched_demo_dataset_and_leaves_git_clean(fake_mmrec, capsys):
    clean = porcelain(fake_mmrec)
    place_demo(capsys, fake_mmrec)
    assert run_cli(capsys, "uninstall", fake_mmrec)[0] == 0
    assert porcelain(fake_mmrec) == clean


CACHES = (".rearm_cache/graphs.lmdb/data.mdb", ".rearm_cache/graphs.lmdb.lock", "mm_adj_10.pt",
          "image_adj_10_True.pt", "user_graph_dict.npy")


@pytest.mark.parametrize("user_file", [None, "my_model.pt"])
def test_caches_computed_from_the_demo_dataset_go_with_it_other_files_keep_it(fake_mmrec, capsys, user_file):
    demo = place_demo(capsys, fake_mmrec)
    for rel in CACHES + ((user_file,) if user_file else ()):
        (demo / rel).parent.mkdir(parents=True, exist_ok=True)
        (demo / rel).write_bytes(b"cache or mine")
    code, out, _ = run_cli(capsys, "uninstall", fake_mmrec)
    assert code == 0
    if user_file is None:
        assert f"removed   {demo}/ (3 file(s) of mmrec-rearm and 5 cache file(s)" in out
        assert porcelain(fake_mmrec) == ""
    else:
        assert f"kept      {demo}/" in out and user_file in out
        assert all((demo / rel).is_file() for rel in CACHES + (user_file,))


# --------------------------------------------------------------------------------------------
# defect 2: reinstall overwrites user edits


def test_reinstall_refuses_to_overwrite_an_edit_and_force_backs_it_up(fake_mmrec, capsys):
    assert run_cli(capsys, "install", fake_mmrec)[0] == 0
    yaml = fake_mmrec / REARM_YAML
    original = yaml.read_bytes()
    yaml.write_bytes(original + b"my: 1\n")
    files = all_files(fake_mmrec)
    code, out, err = run_cli(capsys, "install", fake_mmrec)
    assert code == 2 and "wrote" not in out
    assert err.startswith(f"error: refusing to overwrite {yaml} (changed since mmrec-rearm wrote it)")
    assert err.count("\n") == 1 and "--force" in err
    assert yaml.read_bytes() == original + b"my: 1\n" and all_files(fake_mmrec) == files
    code, out, _ = run_cli(capsys, "install", fake_mmrec, "--force")
    assert code == 0 and f"moved     {yaml} -> {yaml}.bak" in out
    assert (fake_mmrec / (REARM_YAML + ".bak")).read_bytes() == original + b"my: 1\n"
    assert yaml.read_bytes() == original


def test_uninstall_force_moves_changed_files_aside_never_deletes(fake_mmrec, capsys):
    demo = place_demo(capsys, fake_mmrec)
    yaml = fake_mmrec / REARM_YAML
    yaml.write_text("mine\n")
    (demo / "notes.txt").write_text("mine too\n")
    code, out, _ = run_cli(capsys, "uninstall", fake_mmrec, "--force")
    assert code == 0
    assert (fake_mmrec / (REARM_YAML + ".bak")).read_text() == "mine\n" and not yaml.exists()
    assert (demo.parent / "rearm_demo.bak" / "notes.txt").read_text() == "mine too\n" and not demo.exists()
    assert not (fake_mmrec / ".mmrec-rearm-RECORD").exists()


# --------------------------------------------------------------------------------------------
# defect 9 (part): a refused quickstart leaves the install files written


def test_a_refused_quickstart_writes_nothing(fake_mmrec, capsys):
    foreign = fake_mmrec / "data" / "rearm_demo"
    foreign.mkdir()
    (foreign / "rearm_demo.inter").write_text("mine\n")
    before = all_files(fake_mmrec)
    code, _, err = run_cli(capsys, "quickstart", "--mmrec", fake_mmrec, "--epochs", "1")
    assert code == 2 and str(foreign) in err
    assert all_files(fake_mmrec) == before and (foreign / "rearm_demo.inter").read_text() == "mine\n"


# --------------------------------------------------------------------------------------------
# the ledger itself


def test_ledger_rows_are_path_hash_size_like_pips_record(fake_mmrec, capsys):
    import base64

    place_demo(capsys, fake_mmrec)
    rows = [line.split(",") for line in (fake_mmrec / ".mmrec-rearm-RECORD").read_text().splitlines()]
    by_path = {row[0]: row for row in rows}
    assert by_path["data/rearm_demo/"] == ["data/rearm_demo/", "", ""]
    for rel in (REARM_YAML, "src/models/rearm.py", "data/rearm_demo/image_feat.npy",
                "src/configs/dataset/rearm_demo.yaml"):
        content = (fake_mmrec / rel).read_bytes()
        expected = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
        assert by_path[rel] == [rel, expected, str(len(content))]


def test_a_damaged_ledger_stops_uninstall_before_anything_is_removed(fake_mmrec, capsys):
    assert run_cli(capsys, "install", fake_mmrec)[0] == 0
    ledger = fake_mmrec / ".mmrec-rearm-RECORD"
    ledger.write_text(ledger.read_text() + "src/models/x.py,md5=abc\n")
    files = all_files(fake_mmrec)
    code, _, err = run_cli(capsys, "uninstall", fake_mmrec)
    assert code == 2 and f"{ledger}: line" in err and "has 2 fields" in err
    assert all_files(fake_mmrec) == files


def test_a_ledger_row_outside_the_checkout_is_never_acted_on(fake_mmrec, tmp_path, capsys):
    from mmrec_rearm.ledger import digest

    assert run_cli(capsys, "install", fake_mmrec)[0] == 0
    victim = tmp_path / "elsewhere.txt"
    victim.write_text("not mmrec-rearm's\n")
    ledger = fake_mmrec / ".mmrec-rearm-RECORD"
    ledger.write_text(ledger.read_text() + f"{victim},{digest(victim.read_bytes())},{victim.stat().st_size}\n")
    code, out, _ = run_cli(capsys, "uninstall", fake_mmrec)
    assert code == 0 and f"skipped   {victim}" in out and victim.read_text() == "not mmrec-rearm's\n"


def test_an_install_without_ledger_adopts_identical_files_only(fake_mmrec, capsys):
    """A checkout installed by an older mmrec-rearm (marker line, no ledger)."""
    assert run_cli(capsys, "install", fake_mmrec)[0] == 0
    (fake_mmrec / ".mmrec-rearm-RECORD").unlink()
    code, out, _ = run_cli(capsys, "uninstall", fake_mmrec)
    assert code == 0 and "nothing of mmrec-rearm recorded" in out and "older mmrec-rearm" in out
    assert (fake_mmrec / REARM_YAML).exists()
    code, out, _ = run_cli(capsys, "install", fake_mmrec)
    assert code == 0 and all(line.startswith("unchanged") for line in out.splitlines())
    clean_after = run_cli(capsys, "uninstall", fake_mmrec)
    assert clean_after[0] == 0 and porcelain(fake_mmrec) == ""


# --------------------------------------------------------------------------------------------
# acceptance, in a real MMRec clone


def test_real_mmrec_user_files_survive_install_reinstall_uninstall(real_mmrec, capsys):
    """install, edit REARM.yaml, copy a dataset YAML and the demo dataset, reinstall, uninstall:
    every user file is still there byte for byte, and the checkout is otherwise clean."""
    from mmrec_rearm.install import data_root, place_files, planned_files
    from mmrec_rearm.quickstart import demo_files

    clean = porcelain(real_mmrec)
    assert run_cli(capsys, "install", real_mmrec)[0] == 0
    folder, demo = demo_files(real_mmrec, "rearm_demo", 200, 150, 0)   # what quickstart writes
    place_files(real_mmrec, {**planned_files(real_mmrec), **demo}, folders=[folder], report=None)
    yaml = real_mmrec / REARM_YAML
    yaml.write_bytes(yaml.read_bytes() + b"\nembedding_size: 32\n")
    shutil.copy(real_mmrec / "src/configs/dataset/rearm_demo.yaml", real_mmrec / "src/configs/dataset/mydata.yaml")
    shutil.copytree(folder, data_root(real_mmrec) / "mydata")
    mine = {REARM_YAML: yaml.read_bytes(),
            "src/configs/dataset/mydata.yaml": (real_mmrec / "src/configs/dataset/mydata.yaml").read_bytes(),
            **user_files(real_mmrec, data_root(real_mmrec) / "mydata")}
    code, _, err = run_cli(capsys, "install", real_mmrec)                   # reinstall: refuses the edited file
    assert code == 2 and str(yaml) in err
    assert run_cli(capsys, "uninstall", real_mmrec)[0] == 0
    for rel, content in mine.items():
        assert (real_mmrec / rel).read_bytes() == content, rel
    expected = sorted(clean.splitlines() + [f"?? {rel}" for rel in mine])
    assert sorted(porcelain(real_mmrec).splitlines()) == expected


# --------------------------------------------------------------------------------------------
# the five Table-2 baselines are installed under the same guarantees


BASELINES = ("MICRO", "DiffMM", "ApeGNN", "MGDN", "MIGGT")


@pytest.mark.parametrize("model", BASELINES)
def test_a_baselines_files_are_in_the_ledger_and_an_edit_of_them_survives(fake_mmrec, capsys, model):
    shim, yaml = f"src/models/{model.lower()}.py", f"src/configs/model/{model}.yaml"
    assert run_cli(capsys, "install", fake_mmrec)[0] == 0
    rows = {line.split(",")[0] for line in (fake_mmrec / ".mmrec-rearm-RECORD").read_text().splitlines()}
    assert {shim, yaml} <= rows
    edited = (fake_mmrec / yaml).read_bytes() + b"my: 1\n"
    (fake_mmrec / yaml).write_bytes(edited)
    code, _, err = run_cli(capsys, "install", fake_mmrec)             # never overwritten
    assert code == 2 and err.startswith(f"error: refusing to overwrite {fake_mmrec / yaml}")
    code, out, _ = run_cli(capsys, "uninstall", fake_mmrec)           # never removed
    assert code == 0 and (fake_mmrec / yaml).read_bytes() == edited
    assert any(line.startswith("kept") and str(fake_mmrec / yaml) in line for line in out.splitlines())
    assert not (fake_mmrec / shim).exists() and not (fake_mmrec / REARM_YAML).exists()
