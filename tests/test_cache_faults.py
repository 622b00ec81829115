"""Faults around the graph cache that it already survived, kept under test: kill -9 in the middle of a
build, a read-only cache folder, a cache folder that runs out of space. (Damaged entries, truncated
lmdb files and concurrent builders are covered in tests/test_cache.py.)"""
from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time

from mmrec_rearm import cache

from conftest import REPO_ROOT
from test_cache import SMALL, assert_same_graphs, build, make_data, params, write_dataset  # noqa: F401 (fixture)

_KILLED_BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mmrec_rearm import cache
    from mmrec_rearm.data import read_dataset
    from mmrec_rearm.graphs import GraphParams

    dataset, cache_dir, marker = sys.argv[1:4]

    def stuck_build(data, params, progress):
        Path(marker).write_text("building")   # holds the key's lock now
        time.sleep(120)

    cache._build = stuck_build
    cache.load_or_build(read_dataset(dataset), GraphParams(**%r), cache_dir=cache_dir)
""" % (SMALL,))


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]))


def test_kill_9_in_the_middle_of_a_build_leaves_no_entry_and_no_stuck_lock(tmp_path):
    from mmrec_rearm.data import read_dataset
    from mmrec_rearm.graphs import GraphParams

    dataset = write_dataset(tmp_path / "toy")
    marker = tmp_path / "building"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_BUILDER, str(dataset), str(tmp_path / "cache"),
                              str(marker)], env=_env(), stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), child.stderr.read().decode() if child.poll() is not None else "no build started"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    data, params = read_dataset(dataset), GraphParams(**SMALL)
    assert cache.entries(tmp_path / "cache") == []                    # nothing half-stored
    started = time.time()
    graphs, hit = cache.load_or_build(data, params, cache_dir=tmp_path / "cache")
    assert not hit and time.time() - started < 30                     # the dead builder's lock is gone
    assert_same_graphs(graphs, build(data, params))
    assert cache.load_or_build(data, params, cache_dir=tmp_path / "cache")[1] is True


def test_a_read_only_cache_folder_warns_and_the_graphs_are_still_built(tmp_path, make_read_only, caplog, params):
    folder = tmp_path / "cache"
    folder.mkdir()
    make_read_only(folder)
    data = make_data()
    with caplog.at_level(logging.WARNING, logger="mmrec_rearm.cache"):
        graphs, hit = cache.load_or_build(data, params, cache_dir=folder)
    assert not hit
    assert_same_graphs(graphs, build(data, params))
    assert any(str(folder) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


_FULL = textwrap.dedent("""
    import sys
    from mmrec_rearm import cache
    from mmrec_rearm.data import read_dataset
    from mmrec_rearm.graphs import GraphParams
    graphs, hit = cache.load_or_build(read_dataset(sys.argv[1]), GraphParams(**%r), cache_dir=sys.argv[2])
    print("built", hit, graphs.user_homogeneous.nnz)
""" % (SMALL,))


def test_a_cache_folder_that_runs_out_of_space_warns_and_the_graphs_are_still_built(tmp_path):
    """The cache's writes fail as on a full disk (a file-size limit on the process, which works for
    every user); the graphs come back, uncached, with a warning naming the cache."""
    dataset = write_dataset(tmp_path / "toy")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    done = subprocess.run([sys.executable, "-c", _FULL, str(dataset), str(tmp_path / "cache")], env=_env(),
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("built False")
    assert "Traceback" not in done.stderr and str(tmp_path / "cache") in done.stderr
