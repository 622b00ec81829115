"""Every shell command of README.md, run as pasted, in order, on a fresh clone of MMRec.

The README's ```bash blocks are read and each command line is run by bash in a throw-away world:
HOME is a temporary folder (so `~/MMRec` is a new clone), the working directory stands for the
repository root, `python` and `mmrec-rearm` are this interpreter and this source tree (what
`source .venv/bin/activate` gives after `bash scripts/setup.sh`), and `git clone
https://github.com/enoche/MMRec` clones the local MMRec checkout instead of the network one.
Data a user would download is stood in for by small synthetic files of the right names: the Amazon
`baby` folder once the README has created it, and the shared TikTok folder the README points at.

How each command is checked: the setup lines are not rerun (setup.sh must exist; the test suite is
this run); `run`, `compare`, `ablate`, `sensitivity` and `tune` get `--dry-run` (every check before
training: checkout, model, data, features, settings), except the cheap LightGCN `run` on the demo
data, which trains for real and must show its epoch lines (REARM's named losses in real output are
checked by tests/test_resume_mmrec.py), and the small `tune` on the demo data, which runs its study
for real so that the `compare --from-tune` after it (dry run) finds the winner; MMRec's `main.py` is
started and stopped once its model is built; everything else runs for real. A command the table below does not know fails
the test, so a new README command cannot go unchecked.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, locate_mmrec_checkout, mmrec_runtime_problem

README = REPO_ROOT / "README.md"
DRY_RUN = ("run", "compare", "ablate", "sensitivity", "tune")


def readme_commands(text: str) -> list:
    """The command lines of the ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(line.split(" #", 1)[0].strip())
    return commands


def test_readme_commands_are_found_and_have_no_placeholders():
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert "mmrec-rearm quickstart --mmrec ~/MMRec" in commands
    assert any(c.startswith("mmrec-rearm run ") for c in commands)
    for command in commands:
        assert not re.search(r"path/to|<[a-z_ ]+>|\bKEY\b|\.\./\.\./", command), command


def _fake_features(folder: Path, name: str, inter: bool, files) -> None:
    from mmrec_rearm.synth import make_demo_dataset

    made = make_demo_dataset(tempfile.mkdtemp(), name=name, n_users=60, n_items=40, seed=1)
    folder.mkdir(parents=True, exist_ok=True)
    if inter:
        (folder / f"{name}.inter").write_bytes((made / f"{name}.inter").read_bytes())
    for target, source in files:
        np.save(folder / target, np.load(made / source))


@pytest.fixture
def world(tmp_path):
    checkout, why = locate_mmrec_checkout()
    if checkout is None:
        pytest.skip(f"README TEST SKIPPED: {why}")
    problem = mmrec_runtime_problem()
    if problem:
        pytest.skip(f"README TEST SKIPPED: {sys.executable} cannot run MMRec ({problem}); run the tests with "
                    ".venv/bin/python from scripts/setup.sh")
    home, repo, bin_dir = tmp_path / "home", tmp_path / "work" / "mmrec-rearm", tmp_path / "bin"
    for folder in (home, repo, bin_dir):
        folder.mkdir(parents=True)
    for name, body in (("python", '"$@"'), ("mmrec-rearm", '-m mmrec_rearm.cli "$@"')):
        script = bin_dir / name             # not a symlink: a venv's python finds its packages by its path
        script.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {body}\n")
        script.chmod(0o755)
    # the shared TikTok folder the README points at (../shared/data/tiktok from the repository root)
    _fake_features(tmp_path / "work" / "shared" / "data" / "tiktok", "tiktok", True,
                   [("image_feat.npy", "image_feat.npy"), ("audio_feat.npy", "text_feat.npy")])
    env = dict(os.environ, HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")) if p),
               OMP_NUM_THREADS="1", GIT_CONFIG_COUNT="1",
               GIT_CONFIG_KEY_0=f"url.{checkout}.insteadOf", GIT_CONFIG_VALUE_0="https://github.com/enoche/MMRec")
    env.pop("MMREC_REARM_CACHE_DIR", None)
    return repo, home, env


def _bash(command: str, repo: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _until_model_built(command: str, repo: Path, env: dict) -> str:
    """Start ``command`` (MMRec's main.py) and stop it once MMRec has built the model."""
    process = subprocess.Popen(["bash", "-c", command], cwd=repo, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    deadline = time.time() + 900
    try:
        for line in process.stdout:
            seen.append(line)
            if "Trainable parameters" in line or time.time() > deadline:
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return "".join(seen)


def test_every_readme_command_runs_as_pasted(world):
    repo, home, env = world
    trained = tuned = False
    for command in readme_commands(README.read_text(encoding="utf-8")):
        print(f"[{time.strftime('%H:%M:%S')}] {command}", flush=True)
        words = shlex.split(command, comments=True)
        if command in ("bash scripts/setup.sh", "source .venv/bin/activate"):
            assert (REPO_ROOT / "scripts" / "setup.sh").read_text().count(".venv") >= 2
            continue
        if command == "python -m pytest -q":
            continue                                  # this is that run
        if command == "bash scripts/gpu-check.sh":    # needs a GPU: checked for syntax here, run on a GPU machine
            assert subprocess.run(["bash", "-n", str(REPO_ROOT / "scripts" / "gpu-check.sh")]).returncode == 0
            continue
        if words[:2] == ["mkdir", "-p"]:
            assert _bash(command, repo, env).returncode == 0
            target = Path(os.path.expanduser(words[2].replace("~", str(home), 1)))
            if target.name == "baby":                 # the user puts the downloaded files here
                _fake_features(target, "baby", True, [("image_feat.npy", "image_feat.npy"),
                                                      ("text_feat.npy", "text_feat.npy")])
            continue
        if "python main.py" in command:
            out = _until_model_built(command, repo, env)
            assert "Trainable parameters" in out, out[-3000:]
            continue
        if words[0] == "mmrec-rearm" and words[1] in DRY_RUN:
            model = words[words.index("-m") + 1] if "-m" in words else "REARM"
            real = words[1] in ("run", "tune") and "rearm_demo" in words and model == "LightGCN"
            done = _bash(command if real else command + " --dry-run", repo, env)
            assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            if real and words[1] == "run":
                trained = True
                epochs = int(words[words.index("--epochs") + 1])
                assert re.search(rf"^epoch +0/{epochs} .* loss \S+  valid recall@20 ", done.stdout, re.M), done.stdout
                assert "done in" in done.stdout and "test  R@10" in done.stdout
            if real and words[1] == "tune":
                tuned = True
                trials = int(words[words.index("--trials") + 1])
                found = re.search(r"^study '(\S+)': (\d+) trials .*best trial \d+: valid recall@20 ", done.stdout, re.M)
                assert found and int(found.group(2)) >= trials, done.stdout[-3000:]
            if "--from-tune" in words:
                assert tuned, "the README runs `compare --from-tune` before any `tune`"
                assert "of study" in done.stdout, done.stdout[-3000:]     # the winner's configuration is used
            continue
        if words[0] in ("git", "ls", "mmrec-rearm"):
            done = _bash(command, repo, env)
            assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            continue
        pytest.fail(f"README command not covered by tests/test_readme.py: {command}")
    assert trained, "the README shows no cheap LightGCN `run` on the demo data"
    assert not (home / "MMRec" / "src" / "models" / "rearm.py").exists()   # the last command uninstalled
