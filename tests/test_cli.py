"""The mmrec-rearm command line, run in-process through main() on a tiny hand-made dataset."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import mmrec_rearm
from mmrec_rearm import cache, cli
from mmrec_rearm.data import read_dataset
from mmrec_rearm.graphs import GraphParams, HomogeneousGraphs, build_graphs

NAMES = HomogeneousGraphs.GRAPH_NAMES
REPO_ROOT = Path(__file__).resolve().parents[1]

# Training rows (x_label 0): items 0 and 1 are bought together by users 0, 1, 2; item 0 with
# item 2 by user 3 only; items 3 and 4 by user 4; items 2 and 4 by user 5.
TRAIN = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 2), (4, 3), (4, 4), (5, 2), (5, 4)]
# Valid / test rows: if they leaked into the graphs, item 3's strongest partner would be item 0.
HELD_OUT = [(6, 3, 1), (6, 0, 1), (7, 3, 2), (7, 0, 2)]
N_USERS, N_ITEMS = 8, 5
K1 = ["--set", "user_knn_k=1", "item_knn_k=1"]


@pytest.fixture
def toy(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    folder = tmp_path / "toy"
    folder.mkdir()
    rows = ["userID\titemID\trating\ttimestamp\tx_label"]
    rows += [f"{u}\t{i}\t4\t{100 + n}\t0" for n, (u, i) in enumerate(TRAIN)]
    rows += [f"{u}\t{i}\t4\t{900 + n}\t{label}" for n, (u, i, label) in enumerate(HELD_OUT)]
    (folder / "toy.inter").write_text("\n".join(rows) + "\n")
    rng = np.random.default_rng(3)
    np.save(folder / "image_feat.npy", rng.standard_normal((N_ITEMS, 4)).astype(np.float32))
    np.save(folder / "text_feat.npy", rng.standard_normal((N_ITEMS, 3)).astype(np.float32))
    return folder


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def table(out: str) -> dict:
    """{graph: (nodes, edges, seconds, status)} from the printed table."""
    lines = out.splitlines()
    start = next(n for n, line in enumerate(lines) if line.split()[:1] == ["graph"])
    rows = {}
    for line in lines[start + 1 : start + 1 + len(NAMES)]:
        name, nodes, edges, seconds, status = line.split()
        rows[name] = (int(nodes), int(edges), float(seconds), status)
    return rows


def expected(folder: Path, features=None, **params) -> HomogeneousGraphs:
    data = read_dataset(folder, features=features)
    return build_graphs(data.interactions, data.features, GraphParams(**params))


def test_export_names_match_graph_names():
    assert cli.EXPORT_NAMES == NAMES


def test_graphs_miss_then_hit_and_table(toy, capsys):
    code, out, err = run(capsys, "graphs", toy, *K1)
    assert code == 0, err
    want = expected(toy, user_knn_k=1, item_knn_k=1)
    rows = table(out)
    assert list(rows) == list(NAMES)
    for name in NAMES:
        nodes, edges, seconds, status = rows[name]
        assert nodes == (N_USERS if name.startswith("user") else N_ITEMS)
        assert edges == getattr(want, name).nnz
        assert status == "miss" and seconds >= 0
    assert f"users={N_USERS} items={N_ITEMS} train={len(TRAIN)} modalities=image:4,text:3" in out
    assert "[mmrec-rearm]" in err  # progress goes to stderr, not into the table
    assert (toy / ".rearm_cache" / "graphs.lmdb").is_dir()

    code, out, _ = run(capsys, "graphs", toy, *K1)
    assert code == 0
    assert {r[3] for r in table(out).values()} == {"hit"}
    assert "total" in out.splitlines()[-1] and "(hit)" in out


def test_export_writes_float32_csr_equal_to_the_graphs(toy, tmp_path, capsys):
    out_dir = tmp_path / "exported"
    code, out, err = run(capsys, "graphs", toy, *K1, "--export", out_dir)
    assert code == 0, err
    want = expected(toy, user_knn_k=1, item_knn_k=1)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{n}.npz" for n in NAMES)
    for name in NAMES:
        got = sp.load_npz(out_dir / f"{name}.npz")
        assert got.format == "csr" and got.dtype == np.float32
        side = N_USERS if name.startswith("user") else N_ITEMS
        assert got.shape == (side, side)
        ref = getattr(want, name)
        np.testing.assert_array_equal(got.indptr, ref.indptr)
        np.testing.assert_array_equal(got.indices, ref.indices)
        np.testing.assert_array_equal(got.data, ref.data)
    # Known co-occurrences (top-1): 0 <-> 1 (three shared users), 3 -> 4 (held-out rows ignored),
    # user 4 -> user 5 (their only shared item is 4).
    items = sp.load_npz(out_dir / "item_cooccurrence.npz")
    users = sp.load_npz(out_dir / "user_cooccurrence.npz")
    for mat, row, col in ((items, 0, 1), (items, 1, 0), (items, 3, 4), (users, 4, 5)):
        cols = mat.indices[mat.indptr[row]:mat.indptr[row + 1]]
        assert cols.tolist() == [col]
        assert mat[row, col] > 0


def test_feature_option_fixes_modalities_and_order(toy, tmp_path, capsys):
    run(capsys, "graphs", toy, *K1)  # default order first: image, text
    out_dir = tmp_path / "swapped"
    code, out, err = run(capsys, "graphs", toy, "--feature", "text=text_feat.npy", "image=image_feat.npy",
                         *K1, "--export", out_dir)
    assert code == 0, err
    assert "modalities=text:3,image:4" in out
    assert {r[3] for r in table(out).values()} == {"miss"}  # another key than the default order
    want = expected(toy, {"text": "text_feat.npy", "image": "image_feat.npy"}, user_knn_k=1, item_knn_k=1)
    got = sp.load_npz(out_dir / "item_homogeneous.npz")
    np.testing.assert_array_equal(got.toarray(), want.item_homogeneous.toarray())

    code, out, _ = run(capsys, "graphs", toy, "--feature", "image=image_feat.npy", "--feature",
                       "text=text_feat.npy", *K1)
    assert code == 0 and {r[3] for r in table(out).values()} == {"hit"}  # repeated flag, same order

    code, out, _ = run(capsys, "graphs", toy, "--feature", "image=image_feat.npy", *K1)
    assert code == 0 and re.search(r"modalities=image:4$", out, re.M)


def test_set_parses_tuples_floats_and_bools(toy, tmp_path, capsys):
    out_dir = tmp_path / "e"
    code, _, err = run(capsys, "graphs", toy, "--set", "user_knn_k=1", "item_knn_k=1",
                       "u_modal_weights=0.25,0.75", "ii_co_weight=0.5", "knn_self=false",
                       "--export", out_dir)
    assert code == 0, err
    want = expected(toy, user_knn_k=1, item_knn_k=1, u_modal_weights=(0.25, 0.75), ii_co_weight=0.5,
                    knn_self=False)
    for name in ("user_interest", "item_homogeneous"):
        np.testing.assert_array_equal(sp.load_npz(out_dir / f"{name}.npz").toarray(),
                                      getattr(want, name).toarray())


def test_parse_value():
    assert cli.parse_value("3") == 3 and isinstance(cli.parse_value("3"), int)
    assert cli.parse_value("0.5") == 0.5
    assert cli.parse_value("0.5,0.3,0.2") == (0.5, 0.3, 0.2)
    assert cli.parse_value("1,") == (1,)
    assert cli.parse_value("True") is True and cli.parse_value("off") is False
    assert cli.parse_value("none") is None
    assert cli.parse_value("duplicate") == "duplicate"


def test_parse_params_types_values_by_field():
    got = cli.parse_params([("cooc_padding", "none"), ("uu_co_weight", "1"), ("user_knn_k", "7"),
                            ("knn_self", "no"), ("u_modal_weights", "1"), ("i_modal_weights", "0.5,0.5"),
                            ("cooc_empty", "self"), ("bogus", "x")], GraphParams)
    assert got == {"cooc_padding": "none", "uu_co_weight": 1.0, "user_knn_k": 7, "knn_self": False,
                   "u_modal_weights": (1.0,), "i_modal_weights": (0.5, 0.5), "cooc_empty": "self",
                   "bogus": "x"}
    assert type(got["uu_co_weight"]) is float and type(got["user_knn_k"]) is int
    assert cli.parse_params([("u_modal_weights", "none")], GraphParams) == {"u_modal_weights": None}


def test_unknown_set_key_exits_2_listing_valid_keys(toy, capsys):
    code, out, err = run(capsys, "graphs", toy, "--set", "bogus_k=3")
    assert code == 2
    assert err.startswith("error: ") and "bogus_k" in err and "user_knn_k" in err
    assert "Traceback" not in err and out == ""


def test_k_too_large_for_the_data_exits_2(toy, capsys):
    code, _, err = run(capsys, "graphs", toy, "--set", "user_knn_k=50")
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: ") and "user_knn_k" in err.splitlines()[-1]


def test_export_into_a_file_path_exits_2(toy, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    code, out, err = run(capsys, "graphs", toy, *K1, "--export", blocker / "sub")
    assert code == 2 and err.startswith(f"error: {blocker / 'sub'}: cannot write the exported graphs there")
    assert out == "" and not (toy / ".rearm_cache").exists()  # refused before reading or building


def test_malformed_set_exits_2(toy, capsys):
    code, _, err = run(capsys, "graphs", toy, "--set", "user_knn_k")
    assert code == 2
    assert "error: --set 'user_knn_k': expected NAME=VALUE" in err


def test_missing_dataset_folder_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "no_such_dataset"
    code, _, err = run(capsys, "graphs", missing)
    assert code == 2
    assert err.startswith("error: ") and str(missing) in err


def test_bad_usage_exits_2(capsys):
    assert cli.main([]) == 2
    assert cli.main(["graphs"]) == 2
    assert "usage" in capsys.readouterr().err


def test_no_cache_and_cache_dir(toy, tmp_path, capsys):
    code, out, _ = run(capsys, "graphs", toy, *K1, "--no-cache")
    assert code == 0 and {r[3] for r in table(out).values()} == {"off"}
    assert not (toy / ".rearm_cache").exists()
    elsewhere = tmp_path / "cache_here"
    run(capsys, "graphs", toy, *K1, "--cache-dir", elsewhere)
    code, out, _ = run(capsys, "graphs", toy, *K1, "--cache-dir", elsewhere)
    assert {r[3] for r in table(out).values()} == {"hit"}
    assert (elsewhere / "graphs.lmdb").is_dir() and not (toy / ".rearm_cache").exists()


def test_cache_ls_and_clear(toy, capsys):
    run(capsys, "graphs", toy, *K1)
    run(capsys, "graphs", toy, "--set", "user_knn_k=2", "item_knn_k=1")
    code, out, _ = run(capsys, "cache", "ls", toy)
    assert code == 0
    assert f"{toy / '.rearm_cache'}: 2 entries" in out
    assert sum(f"users={N_USERS} items={N_ITEMS}" in line and line.endswith("ok")
               for line in out.splitlines()) == 2
    code, out, _ = run(capsys, "cache", "clear", toy)
    assert code == 0 and "removed 2 entries" in out
    code, out, _ = run(capsys, "cache", "ls", toy / ".rearm_cache")
    assert ": 0 entries" in out
    code, _, err = run(capsys, "cache", "ls", toy.parent)
    assert code == 2 and "no graph cache here" in err


def test_installer_commands_dispatch(monkeypatch, capsys, tmp_path):
    calls = []
    fake = types.ModuleType("mmrec_rearm.install")
    fake.install = lambda d, **kw: calls.append(("install", d, kw))
    fake.uninstall = lambda d, **kw: calls.append(("uninstall", d, kw))
    fake_qs = types.ModuleType("mmrec_rearm.quickstart")
    fake_qs.quickstart = lambda d, **kw: calls.append(("quickstart", d, kw))
    monkeypatch.setitem(sys.modules, "mmrec_rearm.install", fake)
    monkeypatch.setitem(sys.modules, "mmrec_rearm.quickstart", fake_qs)
    monkeypatch.setattr(mmrec_rearm, "install", fake, raising=False)
    monkeypatch.setattr(mmrec_rearm, "quickstart", fake_qs, raising=False)
    assert cli.main(["install", "/x/MMRec"]) == 0
    assert cli.main(["uninstall", "/x/MMRec", "--force"]) == 0
    assert cli.main(["quickstart", "--mmrec", "/x/MMRec", "--epochs", "2"]) == 0
    assert cli.main(["quickstart", "--mmrec", "/x/MMRec"]) == 0
    assert calls == [("install", "/x/MMRec", {}), ("uninstall", "/x/MMRec", {"force": True}),
                     ("quickstart", "/x/MMRec", {"epochs": 2}), ("quickstart", "/x/MMRec", {})]


def test_experiment_commands_are_mounted(capsys):
    for command in ("compare", "user-graph", "convert-official-splits"):
        assert cli.main([command, "--help"]) == 0
        assert f"usage: mmrec-rearm {command}" in capsys.readouterr().out


def test_installer_errors_exit_2(monkeypatch, capsys):
    from mmrec_rearm.errors import InstallError

    fake = types.ModuleType("mmrec_rearm.install")

    def refuse(d):
        raise InstallError(f"{d}: not an MMRec checkout")

    fake.install = refuse
    monkeypatch.setitem(sys.modules, "mmrec_rearm.install", fake)
    monkeypatch.setattr(mmrec_rearm, "install", fake, raising=False)
    code, _, err = run(capsys, "install", "/nowhere")
    assert code == 2 and err.strip() == "error: /nowhere: not an MMRec checkout"


def test_unexpected_errors_keep_their_traceback(toy, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(cache, "load_or_build", broken)
    with pytest.raises(RuntimeError, match="bug"):
        cli.main(["graphs", str(toy)])


def _console_script() -> str | None:
    beside = Path(sys.executable).parent / "mmrec-rearm"
    return str(beside) if beside.is_file() else shutil.which("mmrec-rearm")


def test_console_script(toy, tmp_path):
    script = _console_script()
    if script is None:
        pytest.skip("mmrec-rearm console script not installed (pip install -e . puts it on PATH)")
    env = dict(os.environ)
    env.pop(cache.ENV_VAR, None)
    cmd = [script, "graphs", str(toy), *K1, "--export", str(tmp_path / "npz")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {r[3] for r in table(done.stdout).values()} == {"miss"}
    assert len(list((tmp_path / "npz").glob("*.npz"))) == len(NAMES)
    bad = subprocess.run([script, "graphs", str(toy), "--set", "nope=1"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "nope" in bad.stderr
