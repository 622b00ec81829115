"""Ctrl-C and kill -9: commands end promptly in one line, and no training process outlives them.

`compare` and `quickstart` run against a fake MMRec checkout whose `quick_start` "trains" forever
(it writes its pid to a file, then prints an epoch line a minute). Each command runs as a real
subprocess in its own process group; Ctrl-C in a terminal is SIGINT to that whole group, and a
signal sent to the command alone is the other way it can arrive.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmrec_rearm import cache, graphs
from mmrec_rearm.cli import main as cli_main

from conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals and /proc (Linux)")

TRAINS_FOREVER = '''
import os, time
def quick_start(model, dataset, config_dict, save_model=True, mg=False):
    with open(os.environ["TRAINING_PID_FILE"], "w") as handle:
        handle.write(str(os.getpid()))
    epoch = 0
    while True:  # like a real epoch: a line now and then (a dead reader's pipe would end a chattier one)
        print("epoch %d training [time: 60.00s, train loss: 1.0]" % epoch, flush=True)
        epoch += 1
        time.sleep(60)
'''
CONFIGURATOR = '''
class Config(dict):
    def __init__(self, model, dataset, config_dict):
        super().__init__(config_dict)
        self["hyper_parameters"] = ["seed"]
        self.setdefault("seed", [999])
'''
UTILS = "def get_trainer():\n    return object\n"


def fake_mmrec(root: Path) -> Path:
    files = {
        "src/main.py": "", "src/common/abstract_recommender.py": "class GeneralRecommender: pass\n",
        "src/utils/quick_start.py": TRAINS_FOREVER, "src/utils/configurator.py": CONFIGURATOR,
        "src/utils/utils.py": UTILS, "src/models/slow.py": "class SLOW: pass\n",
        "src/configs/model/SLOW.yaml": "n_layers: 1\n",
        "src/configs/overall.yaml": "seed: [999]\ndata_path: '../data/'\nvalid_metric: Recall@20\n"
                                    "hyper_parameters: [\"seed\"]\n",
        "src/configs/dataset/toy.yaml": "inter_file_name: 'toy.inter'\n",
        "data/toy/toy.inter": "userID\titemID\tx_label\n0\t0\t0\n1\t1\t0\n0\t1\t2\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its exit status is left to collect


def wait_until(condition, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _sigint_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(tmp_path: Path, *argv: str) -> tuple:
    pid_file = tmp_path / "training.pid"
    env = dict(os.environ, TRAINING_PID_FILE=str(pid_file), PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    # as from a terminal: an interactive shell starts its foreground job with SIGINT at its default,
    # whereas a suite launched in the background by a script inherits SIGINT ignored (POSIX), and a
    # command that ignores Ctrl-C cannot be tested for how it ends on one
    command = subprocess.Popen([sys.executable, "-m", "mmrec_rearm.cli", *argv], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=_sigint_as_in_a_terminal)
    if not wait_until(lambda: pid_file.is_file() and pid_file.read_text().strip(), 60):
        command.kill()
        pytest.fail(f"the fake training never started: {command.communicate()}")
    return command, int(pid_file.read_text())


COMMANDS = {
    "compare": lambda root: ["compare", "--mmrec", str(root), "-d", "toy", "-m", "SLOW", "--target", ""],
    "quickstart": lambda root: ["quickstart", "--mmrec", str(root), "--epochs", "1"],
    "run": lambda root: ["run", "--mmrec", str(root), "-d", "toy", "-m", "SLOW"],
}


def _signal_state(pid: int) -> str:
    """The Sig* lines of /proc/PID/status (ignored, blocked, caught masks): what a failure needs."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as exc:
        return f"unreadable ({exc})"
    return ", ".join(line.replace("\t", " ") for line in lines if line.startswith(("SigIgn", "SigBlk", "SigCgt")))


@pytest.mark.parametrize("how", ["terminal", "command only"])
@pytest.mark.parametrize("command_name", sorted(COMMANDS))
def test_ctrl_c_ends_the_command_and_its_training_promptly_in_one_line(tmp_path, command_name, how):
    root = fake_mmrec(tmp_path / "MMRec")
    command, training = start(tmp_path, *COMMANDS[command_name](root))
    if how == "terminal":
        os.killpg(command.pid, signal.SIGINT)   # what the terminal does: the whole foreground group
    else:
        os.kill(command.pid, signal.SIGINT)
    try:
        out, err = command.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        signals = _signal_state(command.pid)   # SIGINT is bit 1 (value 2): ignored or blocked here?
        os.killpg(command.pid, signal.SIGKILL)
        out, err = command.communicate()
        pytest.fail(f"the command did not end within 15 s of Ctrl-C; its signals {signals}; "
                    f"this test process's {_signal_state(os.getpid())}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}")
    assert wait_until(lambda: not alive(training), 5), "the training process outlived the command"
    assert command.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and "same command" in last
    if command_name == "compare":
        assert "0 of 1 are done and kept in" in last and "runs.jsonl" in last
    elif command_name == "run":
        assert "no epoch had finished" in last and "without --fresh" in last
    else:
        assert "stays installed" in last and "uninstall" in last


@pytest.mark.parametrize("command_name", sorted(COMMANDS))
def test_a_training_process_never_outlives_its_killed_command(tmp_path, command_name):
    root = fake_mmrec(tmp_path / "MMRec")
    command, training = start(tmp_path, *COMMANDS[command_name](root))
    assert alive(training)
    os.kill(command.pid, signal.SIGKILL)          # no handler can run: the kernel must end the child
    command.communicate(timeout=15)
    ended = wait_until(lambda: not alive(training), 5)
    if not ended:
        os.kill(training, signal.SIGKILL)
    assert ended, "the training process kept running after its command was killed with SIGKILL"


def test_ctrl_c_during_a_graph_build_stores_nothing_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    from mmrec_rearm.synth import make_demo_dataset

    folder = make_demo_dataset(tmp_path, "demo", n_users=60, n_items=40, seed=0, image_dim=8, text_dim=6)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(graphs, "build_graphs", interrupted)
    code = cli_main(["graphs", str(folder), "--set", "user_knn_k=5", "item_knn_k=3"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]                                 # after the build's progress lines
    assert code == 130 and "Traceback" not in err
    assert last.startswith("interrupted: `mmrec-rearm graphs` stopped before it finished") and "same command" in last
    assert cache.entries(folder) == []                                  # no half entry in the cache
