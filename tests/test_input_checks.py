"""Bad inputs end in one named error (or a warning where the input is legal but useless): feature
files that are missing, mistyped, text or pickles; ids far beyond what the file holds; paths that
leave the dataset folder; all-zero features. Tiny synthetic data; the MMRec-host tests copy one
file of a real checkout ($MMREC_SRC or ~/MMRec) and skip, saying how to enable them, without one."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mmrec_rearm.cli import main as cli_main
from mmrec_rearm.data import read_dataset, read_interactions
from mmrec_rearm.errors import DatasetError

from conftest import REPO_ROOT, locate_mmrec_checkout, mmrec_runtime_problem

INTER = "userID\titemID\tx_label\n0\t0\t0\n0\t1\t0\n1\t1\t0\n1\t2\t0\n2\t0\t0\n2\t2\t0\n0\t2\t1\n1\t0\t2\n"


def toy(tmp_path: Path, name: str = "toy", inter: str = INTER, features: bool = True) -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True)
    (folder / f"{name}.inter").write_text(inter)
    if features:
        rng = np.random.default_rng(0)
        np.save(folder / "image_feat.npy", rng.standard_normal((3, 4)).astype(np.float32))
        np.save(folder / "text_feat.npy", rng.standard_normal((3, 5)).astype(np.float32))
    return folder


def run(capsys, *argv) -> tuple:
    code = cli_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------------------------
# defect 8: one stray huge id


def test_one_stray_huge_id_is_a_named_error_quoting_the_line(tmp_path, capsys):
    folder = toy(tmp_path, inter=INTER + "100000000\t1\t0\n")
    with pytest.raises(DatasetError) as info:
        read_interactions(folder / "toy.inter")
    message = str(info.value)
    assert "line 10 ('100000000\\t1\\t0')" in message and "100000001 users" in message
    assert "3 distinct userID values" not in message or "more than 10x" in message
    code, out, err = run(capsys, "graphs", folder, "--no-cache")
    assert code == 2 and err.startswith(f"error: {folder / 'toy.inter'}: line 10 ") and "Traceback" not in err


def test_ids_with_ordinary_gaps_are_accepted(tmp_path):
    gaps = "userID\titemID\tx_label\n" + "".join(f"{u}\t{u % 3}\t0\n" for u in range(0, 600, 2))
    parsed = read_interactions(toy(tmp_path, inter=gaps, features=False) / "toy.inter")
    assert int(parsed.users.max()) == 598                   # half the ids unused: a gap, not a stray id


# --------------------------------------------------------------------------------------------
# feature files that are not .npy arrays


def test_a_text_file_named_npy_gets_its_own_message(tmp_path, capsys):
    folder = toy(tmp_path)
    (folder / "image_feat.npy").write_text("0.1,0.2,0.3,0.4\n0.5,0.6,0.7,0.8\n0.9,1.0,1.1,1.2\n")
    code, _, err = run(capsys, "graphs", folder, "--no-cache")
    assert code == 2 and "holds text ('0.1,0.2,0.3,0.4'" in err and "np.loadtxt" in err
    assert "pickled" not in err


def test_a_pickle_named_npy_is_refused_without_being_loaded(tmp_path, capsys):
    folder = toy(tmp_path)
    import pickle

    (folder / "image_feat.npy").write_bytes(pickle.dumps(np.zeros((3, 4))))
    code, _, err = run(capsys, "graphs", folder, "--no-cache")
    assert code == 2 and "it is a Python pickle" in err


def test_all_zero_features_warn_that_the_graphs_are_identity(tmp_path):
    folder = toy(tmp_path)
    np.save(folder / "text_feat.npy", np.zeros((3, 5), np.float32))
    with pytest.warns(UserWarning, match=r"text_feat\.npy: modality 'text' is all zeros .*self-loops \(identity\)"):
        read_dataset(folder)


# --------------------------------------------------------------------------------------------
# defect 6 and the REARM model's own checks (stand-in host)


torch = pytest.importorskip("torch")

from test_model import Demo  # noqa: E402


def test_a_mistyped_text_feature_file_is_an_error_naming_path_and_key(tmp_path):
    demo = Demo(tmp_path)
    with pytest.raises(DatasetError) as info:
        demo.model(text_feature_file="txt_feat.npy")
    message = str(info.value)
    assert f"{tmp_path / 'demo' / 'txt_feat.npy'} (text_feature_file)" in message
    assert "modalities" in message and "data/README.md" in message


def test_modalities_may_leave_out_a_missing_file_explicitly(tmp_path):
    demo = Demo(tmp_path)
    model = demo.model(text_feature_file="txt_feat.npy", modalities="first")
    assert model.modality_names == ("image_feat",)
    with pytest.raises(DatasetError, match=r"txt_feat\.npy \(text_feature_file\)"):
        demo.model(text_feature_file="txt_feat.npy", modalities="second")


def test_extra_feature_files_stay_inside_the_dataset_folder(tmp_path):
    demo = Demo(tmp_path)
    outside = tmp_path / "secret_feat.npy"
    np.save(outside, np.ones((demo.n_items, 3), np.float32))
    with pytest.raises(DatasetError, match=r"extra_feature_files\[0\] = '\.\./secret_feat\.npy' leads out of the "
                                           r"dataset folder"):
        demo.model(extra_feature_files=["../secret_feat.npy"])
    model = demo.model(extra_feature_files=[str(outside)])          # an absolute path is the explicit way
    assert model.modality_names == ("image_feat", "text_feat", "secret_feat")


# --------------------------------------------------------------------------------------------
# defect 6 under MMRec's own base class (its GeneralRecommender, copied from a real checkout)

HOST_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from mmrec_rearm import host
    assert host.USING_MMREC, "MMRec's GeneralRecommender was not picked up"
    from mmrec_rearm.host import ArrayDataLoader
    from mmrec_rearm.model.rearm import REARM
    config = dict(USER_ID_FIELD="userID", ITEM_ID_FIELD="itemID", NEG_PREFIX="neg__", train_batch_size=8,
                  device="cpu", end2end=False, is_multimodal_model=True, data_path=sys.argv[2], dataset="baby",
                  vision_feature_file="image_feat.npy", text_feature_file="text_feat.npy", rearm_cache_dir=False,
                  embedding_size=8, user_knn_k=2, item_knn_k=2)
    try:
        REARM(config, ArrayDataLoader(np.array([0, 1, 2]), np.array([0, 1, 2])))
    except Exception as exc:
        print(type(exc).__name__ + ": " + str(exc))
""")


def mmrec_base_or_skip(tmp_path: Path) -> Path:
    checkout, why = locate_mmrec_checkout()
    if checkout is None:
        pytest.skip(f"MMREC-HOST TEST SKIPPED: {why}")
    src = tmp_path / "mmrec_src"
    (src / "common").mkdir(parents=True)
    shutil.copy(checkout / "src" / "common" / "abstract_recommender.py", src / "common")
    return src


def run_host(src: Path, data: Path) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", HOST_SCRIPT, str(src), str(data) + os.sep], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_under_mmrec_missing_features_name_the_files_not_features_all_none(tmp_path):
    src = mmrec_base_or_skip(tmp_path)
    toy(tmp_path / "data", name="baby", features=False)
    out = run_host(src, tmp_path / "data")
    assert "Features all NONE" not in out
    assert out.startswith("DatasetError: feature file(s) not found: ")
    for name, key in (("image_feat.npy", "vision_feature_file"), ("text_feat.npy", "text_feature_file")):
        assert f"{tmp_path / 'data' / 'baby' / name} ({key})" in out
    assert "data/README.md" in out


class Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_under_mmrec_a_pickled_feature_file_is_refused_before_mmrec_unpickles_it(tmp_path):
    """MMRec's GeneralRecommender loads features with allow_pickle=True; REARM checks first."""
    src = mmrec_base_or_skip(tmp_path)
    folder = toy(tmp_path / "data", name="baby")
    marker = tmp_path / "PWNED"
    np.save(folder / "image_feat.npy", np.array([Evil(str(marker))], dtype=object), allow_pickle=True)
    out = run_host(src, tmp_path / "data")
    assert out.startswith(f"DatasetError: {folder / 'image_feat.npy'}: feature file of vision_feature_file holds object")
    assert not marker.exists()


def test_real_mmrec_main_without_feature_files_names_them(mmrec_clone):
    """`python main.py -m REARM -d baby` in a clone whose data/baby has no feature files."""
    problem = mmrec_runtime_problem()
    if problem:
        pytest.skip(f"REAL-MMREC TEST SKIPPED: {sys.executable} cannot run MMRec ({problem}); use .venv/bin/python "
                    "from scripts/setup.sh")
    from mmrec_rearm.install import install

    install(mmrec_clone, report=None)
    toy(mmrec_clone / "data", name="baby", features=False)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "main.py", "-m", "REARM", "-d", "baby"], cwd=mmrec_clone / "src",
                          capture_output=True, text=True, env=env, timeout=300)
    text = done.stdout + done.stderr
    assert done.returncode != 0 and "Features all NONE" not in text
    assert f"{mmrec_clone / 'data' / 'baby' / 'image_feat.npy'} (vision_feature_file)" in text
