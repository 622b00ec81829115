"""Graph cache: keys, hits and misses, invalidation, concurrency, damage recovery, stored format."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest
import scipy.sparse as sp

from mmrec_rearm import cache, graphs
from mmrec_rearm.data import TrainingData, read_dataset
from mmrec_rearm.errors import CacheError
from mmrec_rearm.graphs import GraphParams, HomogeneousGraphs, build_graphs

REPO_ROOT = Path(__file__).resolve().parents[1]
NAMES = HomogeneousGraphs.GRAPH_NAMES

# 8 users x 6 items; users 6 and 7 share items with several others so every graph has edges.
TRAIN_PAIRS = [
    (0, 0), (0, 1), (0, 2),
    (1, 0), (1, 1),
    (2, 1), (2, 2), (2, 3),
    (3, 3), (3, 4),
    (4, 4), (4, 5), (4, 0),
    (5, 5), (5, 2),
    (6, 0), (6, 3), (6, 5),
    (7, 1), (7, 4),
]
N_USERS, N_ITEMS = 8, 6
SMALL = dict(user_knn_k=3, item_knn_k=2)


def _features(seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.standard_normal((N_ITEMS, 5)).astype(np.float32),
        "text": rng.standard_normal((N_ITEMS, 3)).astype(np.float32),
    }


def make_data(pairs=TRAIN_PAIRS, features=None, source=None) -> TrainingData:
    users, items = zip(*pairs)
    return TrainingData.from_arrays(users, items, N_USERS, N_ITEMS,
                                    features if features is not None else _features(), source)


def write_dataset(folder: Path, pairs=TRAIN_PAIRS, features=None) -> Path:
    """An MMRec dataset folder `<folder>/<name>.inter` + feature .npy files."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["userID\titemID\trating\ttimestamp\tx_label"]
    lines += [f"{u}\t{i}\t5\t{1000 + n}\t0" for n, (u, i) in enumerate(pairs)]
    lines += [f"{N_USERS - 1}\t{N_ITEMS - 1}\t5\t9999\t2"]  # a test row: counts stay N_USERS x N_ITEMS
    (folder / f"{folder.name}.inter").write_text("\n".join(lines) + "\n")
    for name, arr in (features or _features()).items():
        np.save(folder / f"{name}_feat.npy", arr)
    return folder


def assert_same_graphs(got: HomogeneousGraphs, want: HomogeneousGraphs) -> None:
    for name in NAMES:
        a, b = getattr(got, name), getattr(want, name)
        assert isinstance(a, sp.csr_matrix), name
        assert a.shape == b.shape and a.dtype == b.dtype == np.float32, name
        for part in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(a, part), getattr(b, part), err_msg=f"{name}.{part}")


def build(data: TrainingData, params: GraphParams) -> HomogeneousGraphs:
    return build_graphs(data.interactions, data.features, params)


@pytest.fixture
def params() -> GraphParams:
    return GraphParams(**SMALL)


@pytest.fixture
def count_builds(monkeypatch):
    """Wrap the builder used by load_or_build; the list holds one entry per build."""
    calls = []
    real = cache._build

    def counting(data, params, progress):
        calls.append(params)
        return real(data, params, progress)

    monkeypatch.setattr(cache, "_build", counting)
    return calls


# --------------------------------------------------------------------------------------------
# Hits, misses and the key


def test_miss_then_hit_returns_identical_graphs(tmp_path, params, count_builds):
    data = make_data()
    first, hit1 = cache.load_or_build(data, params, cache_dir=tmp_path)
    second, hit2 = cache.load_or_build(data, params, cache_dir=tmp_path)
    assert (hit1, hit2) == (False, True)
    assert len(count_builds) == 1
    want = build(data, params)
    assert_same_graphs(first, want)
    assert_same_graphs(second, want)
    assert second.seconds == pytest.approx(first.seconds)  # build times come from the manifest
    assert set(second.seconds) == set(NAMES)
    # arrays read back are private, writable copies (not views of the lmdb map)
    second.user_homogeneous.data[:] = 0
    third, _ = cache.load_or_build(data, params, cache_dir=tmp_path)
    assert_same_graphs(third, want)


def test_fingerprint_ignores_paths_and_matrix_layout(params):
    a = make_data(source={"inter": "/a/x.inter"})
    b = make_data(source={"inter": "/elsewhere/y.inter"})
    key = cache.fingerprint(a, params)
    assert len(key) == 64 and set(key) <= set("0123456789abcdef")
    assert cache.fingerprint(b, params) == key
    # Same pairs with unsorted column indices and int64 index arrays: same key.
    m = a.interactions.copy()
    shuffled = sp.csr_matrix((m.data, m.indices.astype(np.int64), m.indptr.astype(np.int64)), shape=m.shape)
    for r in range(m.shape[0]):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        shuffled.indices[lo:hi] = shuffled.indices[lo:hi][::-1]
    shuffled.has_sorted_indices = False
    c = TrainingData(a.n_users, a.n_items, shuffled, a.features, {})
    assert cache.fingerprint(c, params) == key


# Every GraphParams field with a different, valid value. A new field without an entry fails
# test_every_graph_parameter_is_covered, so the key can never silently ignore a parameter.
ALTERED = {
    "user_knn_k": 2,
    "item_knn_k": 3,
    "u_mm_image_weight": 0.7,
    "i_mm_image_weight": 0.4,
    "uu_co_weight": 0.9,
    "ii_co_weight": 0.6,
    "u_modal_weights": (0.25, 0.75),
    "i_modal_weights": (0.6, 0.4),
    "cooc_padding": "none",
    "cooc_empty": "self",
    "knn_self": False,
    "seed": 3,
}


def test_every_graph_parameter_is_covered():
    assert set(ALTERED) == {f.name for f in dataclasses.fields(GraphParams)}


@pytest.mark.parametrize("field", sorted(ALTERED))
def test_each_graph_parameter_invalidates(tmp_path, params, field, count_builds):
    data = make_data()
    cache.load_or_build(data, params, cache_dir=tmp_path)
    changed = dataclasses.replace(params, **{field: ALTERED[field]})
    assert getattr(changed, field) != getattr(params, field)
    assert cache.fingerprint(data, changed) != cache.fingerprint(data, params)
    got, hit = cache.load_or_build(data, changed, cache_dir=tmp_path)
    assert not hit and len(count_builds) == 2
    assert_same_graphs(got, build(data, changed))
    # the first entry is still served for the first parameters
    assert cache.load_or_build(data, params, cache_dir=tmp_path)[1] is True


def _moved_pair():
    pairs = list(TRAIN_PAIRS)
    pairs[3] = (1, 5)  # user 1 now holds item 5 instead of item 0
    return make_data(pairs=pairs)


def _one_feature_value():
    feats = _features()
    feats["text"][4, 2] = np.nextafter(feats["text"][4, 2], np.float32(np.inf))  # one ulp
    return make_data(features=feats)


def _swapped_modalities():
    feats = _features()
    return make_data(features={"text": feats["text"], "image": feats["image"]})


def _renamed_modality():
    feats = _features()
    return make_data(features={"image": feats["image"], "audio": feats["text"]})


def _extra_training_pair():
    return make_data(pairs=TRAIN_PAIRS + [(7, 2)])


@pytest.mark.parametrize("variant", [_moved_pair, _one_feature_value, _swapped_modalities,
                                     _renamed_modality, _extra_training_pair])
def test_each_data_change_invalidates(tmp_path, params, variant, count_builds):
    base = make_data()
    cache.load_or_build(base, params, cache_dir=tmp_path)
    data = variant()
    assert cache.fingerprint(data, params) != cache.fingerprint(base, params)
    got, hit = cache.load_or_build(data, params, cache_dir=tmp_path)
    assert not hit and len(count_builds) == 2
    assert_same_graphs(got, build(data, params))


def test_format_version_and_builder_version_invalidate(tmp_path, params, monkeypatch, count_builds):
    data = make_data()
    key = cache.fingerprint(data, params)
    cache.load_or_build(data, params, cache_dir=tmp_path)
    monkeypatch.setattr(cache.keys, "FORMAT_VERSION", cache.FORMAT_VERSION + 1)
    assert cache.fingerprint(data, params) != key
    assert cache.load_or_build(data, params, cache_dir=tmp_path)[1] is False
    monkeypatch.undo()
    assert cache.fingerprint(data, params) == key
    monkeypatch.setattr(graphs, "BUILDER_VERSION", graphs.BUILDER_VERSION + 1)  # the output changed
    assert cache.fingerprint(data, params) != key
    assert cache.load_or_build(data, params, cache_dir=tmp_path)[1] is False


# --------------------------------------------------------------------------------------------
# Stored format


def _env(directory: Path) -> lmdb.Environment:
    return lmdb.open(str(directory / cache.ENV_DIRNAME), subdir=True, lock=True, max_dbs=1,
                     map_size=cache.DEFAULT_MAP_SIZE)


def test_stored_entry_is_json_manifest_plus_raw_arrays(tmp_path, params):
    data = make_data()
    graphs, _ = cache.load_or_build(data, params, cache_dir=tmp_path)
    key = cache.fingerprint(data, params)
    env = _env(tmp_path)
    try:
        with env.begin() as txn:
            stored = dict(txn.cursor())
    finally:
        env.close()
    expected_keys = {f"{key}/manifest".encode()} | {
        f"{key}/{g}/{p}".encode() for g in NAMES for p in ("indptr", "indices", "data")}
    assert set(stored) == expected_keys
    manifest = json.loads(stored[f"{key}/manifest".encode()])
    assert manifest["key"] == key and manifest["format_version"] == cache.FORMAT_VERSION
    assert manifest["params"] == json.loads(json.dumps(params.to_dict()))
    assert (manifest["n_users"], manifest["n_items"]) == (N_USERS, N_ITEMS)
    assert manifest["modalities"] == [["image", 5], ["text", 3]]
    for g in NAMES:
        mat = getattr(graphs, g)
        assert manifest["graphs"][g]["shape"] == list(mat.shape)
        for p in ("indptr", "indices", "data"):
            raw = stored[f"{key}/{g}/{p}".encode()]
            spec = manifest["arrays"][f"{g}/{p}"]
            assert spec["nbytes"] == len(raw) and spec["dtype"] in ("<i4", "<i8", "<f4")
            assert not raw.startswith(b"\x80")  # no pickle protocol header
            np.testing.assert_array_equal(np.frombuffer(raw, dtype=spec["dtype"]), getattr(mat, p))


# --------------------------------------------------------------------------------------------
# Damage: entries and files


def _flip_byte(value: bytes) -> bytes:
    b = bytearray(value)
    b[len(b) // 2] ^= 0x01
    return bytes(b)


def _edit(directory: Path, key: str, how: str) -> None:
    env = _env(directory)
    try:
        with env.begin(write=True) as txn:
            target = f"{key}/item_semantic/data".encode()
            manifest_key = f"{key}/manifest".encode()
            if how == "flip_value":
                txn.put(target, _flip_byte(txn.get(target)))
            elif how == "truncate_value":
                txn.put(target, txn.get(target)[:-4])
            elif how == "drop_part":
                txn.delete(f"{key}/user_interest/indices".encode())
            elif how == "garbage_manifest":
                txn.put(manifest_key, b"\x00\x01not json")
            elif how == "edit_manifest":  # still valid JSON, but its checksum no longer matches
                body = json.loads(txn.get(manifest_key))
                body["graphs"]["item_semantic"]["seconds"] += 1.0
                txn.put(manifest_key, json.dumps(body).encode())
            elif how == "object_dtype":  # a manifest claiming an object array is refused
                body = json.loads(txn.get(manifest_key))
                body["arrays"]["item_semantic/data"]["dtype"] = "|O"
                body["manifest_sha256"] = cache.entry.manifest_digest(body)
                txn.put(manifest_key, json.dumps(body).encode())
            else:
                raise AssertionError(how)
    finally:
        env.close()


@pytest.mark.parametrize("how", ["flip_value", "truncate_value", "drop_part", "garbage_manifest",
                                 "edit_manifest", "object_dtype"])
def test_corrupt_entry_is_reported_and_rebuilt(tmp_path, params, how, caplog, count_builds):
    data = make_data()
    key = cache.fingerprint(data, params)
    cache.load_or_build(data, params, cache_dir=tmp_path)
    _edit(tmp_path, key, how)
    with caplog.at_level(logging.WARNING, logger="mmrec_rearm.cache"):
        got, hit = cache.load_or_build(data, params, cache_dir=tmp_path)
    assert not hit and len(count_builds) == 2
    assert_same_graphs(got, build(data, params))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert key in warnings[0] and str(tmp_path / cache.ENV_DIRNAME) in warnings[0]
    assert "corrupt" in warnings[0]
    again, hit = cache.load_or_build(data, params, cache_dir=tmp_path)
    assert hit
    assert_same_graphs(again, got)


@pytest.mark.parametrize("size", ["half", "tiny"])
def test_truncated_lmdb_file_is_replaced(tmp_path, params, size, caplog, count_builds):
    data = make_data()
    cache.load_or_build(data, params, cache_dir=tmp_path)
    other = dataclasses.replace(params, seed=5)
    cache.load_or_build(data, other, cache_dir=tmp_path)
    data_file = tmp_path / cache.ENV_DIRNAME / "data.mdb"
    full = data_file.stat().st_size
    # "half" opens fine (lmdb trusts its header; touching a missing page would raise SIGBUS),
    # "tiny" is rejected by lmdb itself as not an lmdb file.
    os.truncate(data_file, full // 2 if size == "half" else 100)
    with caplog.at_level(logging.WARNING, logger="mmrec_rearm.cache"):
        got, hit = cache.load_or_build(data, params, cache_dir=tmp_path)
    assert not hit and len(count_builds) == 3
    assert_same_graphs(got, build(data, params))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "damaged" in messages and str(tmp_path / cache.ENV_DIRNAME) in messages
    assert cache.load_or_build(data, params, cache_dir=tmp_path)[1] is True
    assert not list(tmp_path.glob("graphs.lmdb.removed-*"))


# --------------------------------------------------------------------------------------------
# Concurrency

_CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    import numpy as np
    from mmrec_rearm import cache, graphs
    from mmrec_rearm.data import read_dataset
    from mmrec_rearm.graphs import GraphParams

    dataset, cache_dir, work, me, kw = sys.argv[1:6]
    work = Path(work)
    real = cache._build

    def slow_build(data, params, progress):
        start = time.time()
        with open(work / "builds.txt", "a") as f:
            f.write(me + "\\n")
        time.sleep(1.0)
        out = real(data, params, progress)
        (work / ("build-" + me + ".json")).write_text(json.dumps([start, time.time()]))
        return out

    cache._build = slow_build
    data = read_dataset(dataset)
    params = GraphParams(**json.loads(kw))
    (work / ("ready-" + me)).touch()
    deadline = time.time() + 30
    while len(list(work.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.005)
    t0 = time.time()
    graphs, hit = cache.load_or_build(data, params, cache_dir=cache_dir)
    arrays = {n + "." + p: getattr(getattr(graphs, n), p)
              for n in graphs.GRAPH_NAMES for p in ("indptr", "indices", "data")}
    np.savez(work / ("graphs-" + me + ".npz"), **arrays)
    (work / ("result-" + me + ".json")).write_text(json.dumps({"hit": hit, "t0": t0, "t1": time.time()}))
    """
)


def _run_children(tmp_path: Path, kwargs: list) -> list:
    dataset = write_dataset(tmp_path / "toy")
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH")]))
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD, str(dataset), str(tmp_path / "cache"), str(work),
                          str(n), json.dumps(kw)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for n, kw in enumerate(kwargs)
    ]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    results = [json.loads((work / f"result-{n}.json").read_text()) for n in range(len(kwargs))]
    return results, work, dataset


def _npz_graphs(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_two_processes_same_key_build_once(tmp_path, params):
    results, work, dataset = _run_children(tmp_path, [SMALL, SMALL])
    builders = (work / "builds.txt").read_text().split()
    assert len(builders) == 1  # the build ran once
    hits = sorted(r["hit"] for r in results)
    assert hits == [False, True]
    builder = int(builders[0])
    waiter = 1 - builder
    start, end = json.loads((work / f"build-{builder}.json").read_text())
    # the process that got the hit asked while the other one was still building
    assert results[waiter]["t0"] < end and results[waiter]["t1"] >= end
    want = build(read_dataset(dataset), params)
    for n in (0, 1):
        got = _npz_graphs(work / f"graphs-{n}.npz")
        for g in NAMES:
            for p in ("indptr", "indices", "data"):
                np.testing.assert_array_equal(got[f"{g}.{p}"], getattr(getattr(want, g), p))


def test_two_processes_different_keys_build_in_parallel(tmp_path):
    results, work, _ = _run_children(tmp_path, [SMALL, dict(SMALL, seed=9)])
    assert sorted((work / "builds.txt").read_text().split()) == ["0", "1"]
    assert [r["hit"] for r in results] == [False, False]
    spans = [json.loads((work / f"build-{n}.json").read_text()) for n in (0, 1)]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # the builds overlapped


def test_two_threads_same_key_build_once(tmp_path, params, monkeypatch):
    data = make_data()
    calls = []
    real = cache._build

    def slow(data, params, progress):
        calls.append(1)
        time.sleep(0.3)
        return real(data, params, progress)

    monkeypatch.setattr(cache, "_build", slow)
    results = [None, None]
    said = []

    def worker(n):
        results[n] = cache.load_or_build(data, params, cache_dir=tmp_path, progress=said.append)

    threads = [threading.Thread(target=worker, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1
    assert sorted(hit for _, hit in results) == [False, True]
    assert_same_graphs(results[0][0], results[1][0])
    assert any(m.startswith("waiting for lock") and "is building these graphs" in m for m in said)


# --------------------------------------------------------------------------------------------
# Location, bypass, listing and clearing


def test_default_location_is_inside_the_dataset_folder(tmp_path, params, monkeypatch):
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    folder = write_dataset(tmp_path / "toy")
    data = read_dataset(folder)
    _, hit = cache.load_or_build(data, params)
    assert not hit
    assert (folder / ".rearm_cache" / "graphs.lmdb" / "data.mdb").is_file()
    assert cache.load_or_build(data, params)[1] is True


def test_env_var_and_user_default(tmp_path, params, monkeypatch):
    folder = write_dataset(tmp_path / "toy")
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "from_env"))
    assert cache.resolve_cache_dir(read_dataset(folder)) == tmp_path / "from_env"
    assert cache.resolve_cache_dir(read_dataset(folder), tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv(cache.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    no_folder = make_data()  # built from arrays: no dataset folder to put the cache in
    assert cache.resolve_cache_dir(no_folder) == tmp_path / "xdg" / "mmrec-rearm"
    cache.load_or_build(no_folder, params)
    assert (tmp_path / "xdg" / "mmrec-rearm" / "graphs.lmdb").is_dir()


def test_bypass_writes_nothing(tmp_path, params, count_builds, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "never"))
    data = make_data()
    for _ in range(2):
        got, hit = cache.load_or_build(data, params, cache_dir=False)
        assert not hit
    assert len(count_builds) == 2 and not (tmp_path / "never").exists()
    assert_same_graphs(got, build(data, params))


def test_unusable_cache_dir_warns_and_still_builds(tmp_path, params, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="mmrec_rearm.cache"):
        got, hit = cache.load_or_build(make_data(), params, cache_dir=blocker / "cache")
    assert not hit
    assert_same_graphs(got, build(make_data(), params))
    assert any(str(blocker / "cache") in r.getMessage() for r in caplog.records)


def test_entries_and_clear(tmp_path, params):
    data = make_data()
    cache.load_or_build(data, params, cache_dir=tmp_path)
    other = dataclasses.replace(params, seed=4)
    cache.load_or_build(data, other, cache_dir=tmp_path)
    listed = cache.entries(tmp_path)
    assert sorted(e["key"] for e in listed) == sorted(
        [cache.fingerprint(data, params), cache.fingerprint(data, other)])
    assert all(e["ok"] and e["bytes"] > 0 and e["n_users"] == N_USERS for e in listed)
    assert {e["params"]["seed"] for e in listed} == {0, 4}
    assert cache.clear(tmp_path, key=cache.fingerprint(data, other)) == 1
    assert [e["key"] for e in cache.entries(tmp_path)] == [cache.fingerprint(data, params)]
    assert cache.clear(tmp_path) == 1
    assert cache.entries(tmp_path) == []
    assert not list(tmp_path.glob("*.lock"))[1:]  # only the environment lock may remain
    assert cache.load_or_build(data, params, cache_dir=tmp_path)[1] is False


def test_find_cache_dir_accepts_dataset_folder_and_names_missing_cache(tmp_path, params, monkeypatch):
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    folder = write_dataset(tmp_path / "toy")
    with pytest.raises(CacheError, match=r"no graph cache here .*toy"):
        cache.find_cache_dir(folder)
    cache.load_or_build(read_dataset(folder), params)
    assert cache.find_cache_dir(folder) == folder / ".rearm_cache"
    assert cache.find_cache_dir(folder / ".rearm_cache") == folder / ".rearm_cache"


def test_bad_key_is_refused(tmp_path):
    store = cache.GraphCache(tmp_path)
    with pytest.raises(CacheError, match=r"cache key '\.\./x' is not a sha256 hex digest"):
        store.get("../x")
