"""Shared pytest fixtures. Each section belongs to one test area; keep sections independent."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# One OpenMP thread for the tests and every MMRec run they start (unless the caller sets it): no
# result depends on it, and on a busy machine a multi-threaded torch op waits for its descheduled
# threads (a 2-thread REARM epoch on a TikTok subset took 12x longer with the load at 8).
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")


# --- torch threads (unit tests of the model and the baselines) ------------------------------------

@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: tiny tensors gain nothing from more, and one thread avoids
    contention with other processes on the test machine. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
