"""Shared pytest fixtures. Each section belongs to one test area; keep sections independent."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# One OpenMP thread for the tests and every MMRec run they start (unless the caller sets it): no
# result depends on it, and on a busy machine a multi-threaded torch op waits for its descheduled
# threads (a 2-thread REARM epoch on a TikTok subset took 12x longer with the load at 8).
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

# The files that run real MMRec or the official code for half a minute or more, costliest first.
# They are scheduled before all others (setup.cfg turns off xdist's own order, which puts files with
# many tests first and so left these one-test files to the end, one worker running alone). Each
# file stays on one worker (--dist loadfile): its module fixtures are built once.
RUN_FIRST = ("test_readme.py", "test_integration_table2.py", "test_trajectory_official.py",
             "test_trajectory_official_tiktok.py", "test_integration_mmrec.py", "test_integration_baselines.py",
             "test_resume_mmrec.py")


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(RUN_FIRST)))  # stable: the rest keep their order


# --- shared by several test areas ----------------------------------------------------------------


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (tiny tensors: more threads only contend with other
    processes on the test machine); the previous count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(capsys, *argv) -> tuple:
    """``mmrec-rearm ARGV`` in this process -> (exit status, stdout, stderr)."""
    from mmrec_rearm.cli import main as cli_main

    code = cli_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class PickleBomb:
    """Unpickling it runs ``touch MARKER``: what a crafted pickle can do (the marker shows it ran)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- official REARM clone (parity tests, tests/test_parity_official.py) -------------------------

OFFICIAL_ENV = "REARM_OFFICIAL_SRC"
OFFICIAL_DEFAULT = Path("~/REARM-official").expanduser()
OFFICIAL_HOWTO = (
    "git clone https://github.com/MrShouxingMa/REARM (docs/testing.md lists the environment it "
    "needs and the small fixes for Python 3.11), then set "
    f"{OFFICIAL_ENV}=/path/to/the/clone (default: {OFFICIAL_DEFAULT})"
)


def locate_official_src() -> tuple[Path | None, str]:
    """Return (clone folder, "") or (None, why not) for the official REARM sources.

    `REARM_OFFICIAL_SRC` wins when set; otherwise ~/REARM-official is used if it exists.
    A folder counts as a clone when it holds model.py and utils/helper.py.
    """
    configured = os.environ.get(OFFICIAL_ENV)
    folder = Path(configured).expanduser() if configured else OFFICIAL_DEFAULT
    origin = f"{OFFICIAL_ENV}={configured}" if configured else f"default {OFFICIAL_DEFAULT}"
    if not folder.is_dir():
        return None, f"official REARM clone not found ({origin}); to enable: {OFFICIAL_HOWTO}"
    missing = [name for name in ("model.py", "utils/helper.py", "utils/data_loader.py")
               if not (folder / name).is_file()]
    if missing:
        return None, (f"{folder} ({origin}) is not a REARM clone: missing {', '.join(missing)}; "
                      f"to enable: {OFFICIAL_HOWTO}")
    return folder, ""


@pytest.fixture(scope="session")
def official_src() -> Path:
    """Folder of a runnable clone of MrShouxingMa/REARM; skips (saying how to enable) without one."""
    folder, why = locate_official_src()
    if folder is None:
        pytest.skip(f"PARITY TESTS SKIPPED: {why}")
    return folder


# --- real MMRec checkout (tests/test_install.py, tests/test_integration_mmrec.py) ---------------

MMREC_ENV = "MMREC_SRC"
MMREC_DEFAULT = Path("~/MMRec").expanduser()
MMREC_HOWTO = (f"set {MMREC_ENV}=<checkout>/src or git clone https://github.com/enoche/MMRec "
               f"{MMREC_DEFAULT}; the tests only ever modify a temporary git clone of it")


def locate_mmrec_checkout() -> tuple[Path | None, str]:
    """Return (checkout root, "") or (None, why not) for a git checkout of MMRec.

    `MMREC_SRC` (the checkout or its src/) wins when set; otherwise ~/MMRec is used if present.
    A folder counts when it holds src/main.py and .git (the tests clone it with git).
    """
    configured = os.environ.get(MMREC_ENV)
    folder = Path(configured).expanduser() if configured else MMREC_DEFAULT
    origin = f"{MMREC_ENV}={configured}" if configured else f"default {MMREC_DEFAULT}"
    if folder.name == "src" and (folder / "main.py").is_file():
        folder = folder.parent
    if not folder.is_dir():
        return None, f"no MMRec checkout ({origin} does not exist); to enable: {MMREC_HOWTO}"
    if not (folder / "src" / "main.py").is_file() or not (folder / ".git").exists():
        return None, (f"{folder} ({origin}) is not a git checkout of MMRec (needs src/main.py and "
                      f".git); to enable: {MMREC_HOWTO}")
    return folder, ""


def mmrec_runtime_problem() -> str:
    """Why this interpreter cannot run MMRec's quick_start, or "" when it can."""
    import importlib.util

    missing = [m for m in ("numpy", "scipy", "pandas", "torch", "torchvision", "matplotlib", "lmdb",
                           "yaml", "PIL") if importlib.util.find_spec(m) is None]
    if missing:
        return "missing " + ", ".join(missing)
    import warnings

    import numpy
    import scipy.sparse

    with warnings.catch_warnings():  # numpy < 1.24 warns that the alias is deprecated
        warnings.simplefilter("ignore")
        has_float = hasattr(numpy, "float")  # removed in numpy 1.24 (scripts/mmrec_compat restores it)
    if not has_float:
        return f"numpy {numpy.__version__} lacks np.float, used by MMRec's utils/metrics.py"
    if not hasattr(scipy.sparse.dok_matrix((1, 1)), "_update"):
        return "scipy lacks dok_matrix._update, used by MMRec's LightGCN"
    return ""


#: the Python that runs MMRec in the runner-based tests' subprocesses: this one unless MMREC_PYTHON names another
RUNNER_MMREC_PYTHON = os.environ.get("MMREC_PYTHON", sys.executable)


def real_mmrec_runner_or_skip(what: str) -> tuple[Path, str]:
    """(MMRec src, interpreter) for a test that runs MMRec through our runner (it copies src/; the
    checkout is never touched); skips loudly, naming ``what``, when there is no checkout or the
    interpreter cannot run MMRec."""
    checkout, why = locate_mmrec_checkout()
    if checkout is None:
        pytest.skip(f"{what} SKIPPED: {why}")
    if not Path(RUNNER_MMREC_PYTHON).is_file():
        problem = f"{RUNNER_MMREC_PYTHON} not found"
    else:
        problem = mmrec_runtime_problem() if RUNNER_MMREC_PYTHON == sys.executable else ""
    if problem:
        pytest.skip(f"{what} SKIPPED: {RUNNER_MMREC_PYTHON} cannot run MMRec ({problem}); set MMREC_PYTHON to a "
                    "Python with MMRec's pins (numpy<1.24, scipy<1.12, pandas, torchvision, lmdb) and this package")
    return checkout / "src", RUNNER_MMREC_PYTHON


@pytest.fixture
def mmrec_clone(tmp_path) -> Path:
    """A throw-away `git clone` of the MMRec checkout; skips (saying how to enable) without one."""
    import subprocess

    source, why = locate_mmrec_checkout()
    if source is None:
        pytest.skip(f"REAL-MMREC TESTS SKIPPED: {why}")
    clone = tmp_path / "MMRec"
    subprocess.run(["git", "clone", "-q", str(source), str(clone)], check=True)
    return clone


# --- a minimal fake MMRec tree for the installer (tests/test_install*.py) ------------------------

FAKE_FILES = {
    "src/main.py": "print('fake MMRec')\n",
    "src/models/lightgcn.py": "class LightGCN: pass\n",
    "src/common/abstract_recommender.py": "class GeneralRecommender: pass\n",
    "src/configs/overall.yaml": "data_path: '../data/'\n",
    "src/configs/model/LightGCN.yaml": "n_layers: [1, 2]\n",
    "src/configs/dataset/baby.yaml": "inter_file_name: 'baby.inter'\n",
    "data/README.md": "put datasets here\n",
    ".gitignore": "__pycache__/\n*.log\n",
}


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                          text=True).stdout


def porcelain(root: Path) -> str:
    return git(root, "status", "--porcelain", "--untracked-files=all")


def all_files(root: Path) -> set:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".git" not in p.parts}


@pytest.fixture
def fake_mmrec(tmp_path) -> Path:
    root = tmp_path / "MMRec"
    for rel, text in FAKE_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "fake MMRec")
    return root


@pytest.fixture
def real_mmrec(mmrec_clone) -> Path:
    """Temporary clone of the real checkout (located by locate_mmrec_checkout)."""
    return mmrec_clone


# --- folders that cannot be written (tests/test_output_safety.py, tests/test_cache_faults.py) ----

def mount(folder: Path, *options: str) -> bool:
    """``mount OPTIONS FOLDER`` as root on Linux -> whether it worked (False elsewhere)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return False
    return subprocess.run(["mount", *options, str(folder)], capture_output=True).returncode == 0


class ReadOnly:
    """Makes existing folders read-only, the way that works for this user; undone at the end."""

    def __init__(self):
        self.undo = []

    def __call__(self, folder: Path) -> Path:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            self.undo.append(lambda: folder.chmod(0o755))
        elif mount(folder, "--bind", str(folder)):
            self.undo.append(lambda: subprocess.run(["umount", str(folder)], check=True))
            if not mount(folder, "-o", "remount,bind,ro"):
                pytest.skip("READ-ONLY FOLDER TEST SKIPPED: as root, a read-only bind mount failed")
        else:
            pytest.skip("READ-ONLY FOLDER TEST SKIPPED: running as root, where file permissions do not apply, and "
                        "a read-only bind mount failed; run the tests as a normal user to enable it")
        return folder


@pytest.fixture
def make_read_only():
    maker = ReadOnly()
    yield maker
    for undo in reversed(maker.undo):
        undo()


@pytest.fixture
def read_only_folder(tmp_path, make_read_only):
    folder = tmp_path / "read_only"
    folder.mkdir()
    return make_read_only(folder)

# --- official harness fixtures (tests/official_harness.py: parity and trajectory tests) -----------

@pytest.fixture(scope="session")
def official(official_src):
    """The official `utils.helper`, `utils.data_loader` and `model` modules, imported in isolation."""
    from official_harness import import_official

    return import_official(official_src)


@pytest.fixture(scope="session")
def tiktok_subset():
    """600 consecutive TikTok users with all their interactions, the items they touch and the real
    128-d image and audio features; skips (saying how to enable) without the data."""
    from official_harness import TIKTOK_DEFAULT, TIKTOK_ENV, data_folder_or_skip, read_subset

    folder = data_folder_or_skip(TIKTOK_ENV, TIKTOK_DEFAULT, "TikTok",
                                 ("tiktok.inter", "image_feat.npy", "audio_feat.npy"))
    return read_subset(folder)


@pytest.fixture(scope="session")
def baby_subset():
    """600 consecutive Baby users with all their interactions and the items they touch, with
    seeded random features of Baby's widths (4096-d image, 384-d text); skips without the data."""
    from official_harness import BABY_DEFAULT, BABY_ENV, BABY_RANDOM_FEATURES, data_folder_or_skip, read_subset

    folder = data_folder_or_skip(BABY_ENV, BABY_DEFAULT, "Baby", ("baby.inter",))
    return read_subset(folder, "baby", random_features=BABY_RANDOM_FEATURES)


# --- a fake MMRec checkout for the experiment commands (test_experiments, test_run, test_tune, -----
# --- test_parallel, test_store_schema, test_output_safety): same layout and entry points as
# --- enoche/MMRec, trivial "training"

FAKE_QUICK_START = '''
import importlib
import logging
import os
from utils.utils import get_trainer


def quick_start(model, dataset, config_dict, save_model=True, mg=False):
    os.makedirs("log", exist_ok=True)
    logging.basicConfig(level=logging.INFO, handlers=[
        logging.FileHandler(os.path.join("log", model + "-" + dataset + ".log"), "w"), logging.StreamHandler()])
    importlib.import_module("models." + model.lower())
    config = dict(config_dict, model=model, dataset=dataset)
    if config.get("direct"):  # a quick_start that does not go through get_trainer
        from utils.utils import Trainer
        trainer = Trainer(config, None, mg)
    else:
        trainer = get_trainer()(config, None, mg)
    _, valid, test = trainer.fit(["train"], ["valid"], ["test"], saved=save_model)
    logging.getLogger().info("best valid result: " + "".join("%s: %.04f    " % kv for kv in valid.items()))
    logging.getLogger().info("test result: " + "".join("%s: %.04f    " % kv for kv in test.items()))
'''

FAKE_UTILS = '''
import logging


class Trainer(object):
    """Valid score per epoch = config['curve'] (at most config['epochs'] epochs); metrics derived from
    config 'v'/'t' and the seed. Like MMRec's fit: _train_epoch, then _valid_epoch on valid, early stopping, _valid_epoch on test."""

    def __init__(self, config, model, mg=False):
        self.config = config
        self.cur_step = 0
        self.best_valid_score = -1
        self.device = "cpu"
        self.valid_metric = "recall@20"
        self.epochs = config.get("epochs")

    def _train_epoch(self, train_data, epoch_idx, loss_func=None):
        for _ in train_data:
            pass
        return 1.0 / (epoch_idx + 1), []

    def _valid_epoch(self, data):
        score = self.config.get("curve", [0.1, 0.3, 0.2])[self.epoch]
        return score, {"recall@20": score}

    def fit(self, train_data, valid_data=None, test_data=None, saved=False, verbose=True):
        log = logging.getLogger()
        seed = self.config["seed"][0]
        if self.config.get("crash"):
            import os
            os._exit(7)
        best = -1
        epochs = self.config.get("epochs") or None  # like MMRec: at most `epochs` epochs
        for epoch, score in enumerate(self.config.get("curve", [0.1, 0.3, 0.2])[:epochs]):
            self.epoch = epoch
            loss, _ = self._train_epoch([1, 2], epoch)
            log.info("epoch %d training [time: 0.01s, train loss: %.4f]" % (epoch, loss))
            score, _ = self._valid_epoch(valid_data)
            if score > best:
                best, self.cur_step = score, 0
            else:
                self.cur_step += 1
            self.best_valid_score = best
            self._valid_epoch(test_data)
            log.info("epoch %d evaluating [time: 0.01s, valid_score: %f]" % (epoch, score))
        v = self.config.get("v", 0.2) + seed * 0.001
        t = self.config.get("t", 0.1) + seed * 0.001
        valid = {"recall@10": v / 2, "recall@20": v, "ndcg@10": v / 4, "ndcg@20": v / 3}
        test = {"recall@10": t / 2, "recall@20": t, "ndcg@10": t / 4, "ndcg@20": t / 3}
        return best, valid, test


def get_trainer():
    return Trainer
'''


def make_fake_mmrec(root: Path, models: dict, dataset: str = "toy") -> Path:
    """``models``: name -> model YAML text. Returns the checkout root."""
    src = root / "src"
    for sub in ("utils", "models", "configs/model", "configs/dataset", "common"):
        (src / sub).mkdir(parents=True, exist_ok=True)
    (src / "utils" / "quick_start.py").write_text(FAKE_QUICK_START)
    (src / "utils" / "utils.py").write_text(FAKE_UTILS)
    (src / "configs" / "overall.yaml").write_text(
        "seed: [999]\ndata_path: '../data/'\nvalid_metric: Recall@20\nepochs: 1000\nhyper_parameters: [\"seed\"]\n")
    (src / "configs" / "dataset" / f"{dataset}.yaml").write_text(
        f"USER_ID_FIELD: userID\ninter_file_name: '{dataset}.inter'\nuser_graph_dict_file: 'user_graph_dict.npy'\n")
    for name, yaml_text in models.items():
        (src / "configs" / "model" / f"{name}.yaml").write_text(textwrap.dedent(yaml_text))
        body = "import not_installed_geometric_pkg\n" if "needs_geometric" in yaml_text else ""
        if "user_graph" in yaml_text:
            body += "# reads config['user_graph_dict_file']\n"
        (src / "models" / f"{name.lower()}.py").write_text(body + f"class {name}:\n    pass\n")
    data = root / "data" / dataset
    data.mkdir(parents=True, exist_ok=True)
    (data / f"{dataset}.inter").write_text(
        "userID\titemID\tx_label\n0\t0\t0\n0\t1\t0\n1\t1\t0\n1\t2\t0\n2\t0\t0\n0\t2\t1\n1\t0\t2\n")
    return root


MODEL_A = """
v: [0.3, 0.2]
t: [0.1, 0.4]
reg_weight: 1e-04
hyper_parameters: ["v", "t"]
"""
MODEL_B = """
v: 0.25
t: 0.2
n_layers: [1, 2]
hyper_parameters: ["n_layers"]
"""


def record(model, config, seed, valid, test, status="ok"):
    """A results-store record of one finished run (dataset "d")."""
    from mmrec_rearm.experiments.plan import config_id, run_key
    return {"key": run_key("d", model, config, seed, None), "config_id": config_id("d", model, config, None),
            "model": model, "config": config, "seed": seed, "epochs": None, "status": status,
            "valid": valid, "test": test, "best_epoch": 3, "wall_s": 1.0}


def fake_run(calls, fail_keys=(), interrupt_at=None):
    """A stand-in for the launcher's run function: records each key in ``calls``, fails ``fail_keys``,
    raises KeyboardInterrupt at call number ``interrupt_at``."""
    def run(spec, extra, on_event):
        calls.append(spec.key)
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        on_event({"event": "epoch", "epoch": 0, "loss": 1.0, "valid_score": 0.1, "best_epoch": 0,
                  "best_score": 0.1, "elapsed": 0.1})
        if spec.key in fail_keys:
            return {"status": "failed", "message": "missing Python package 'torch_geometric'", "wall_s": 0.1}
        v = spec.config.get("v", 0.25) + spec.seed * 1e-3
        t = spec.config.get("t", 0.2)
        return {"status": "ok", "valid": {"recall@20": v}, "test": {"recall@10": t / 2, "recall@20": t,
                                                                    "ndcg@10": t / 4, "ndcg@20": t / 3},
                "best_epoch": 0, "wall_s": 0.1}
    return run
