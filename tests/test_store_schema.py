"""The results store checks every record against its schema when reading: a malformed or incomplete
line is reported with its line number and its run is redone; it is never counted and never crashes
the comparison."""
from __future__ import annotations

import json
import re

import pytest

from mmrec_rearm.errors import ConfigError
from mmrec_rearm.experiments import compare
from mmrec_rearm.experiments.mmrec_config import mmrec_src
from mmrec_rearm.experiments.plan import build_plan
from mmrec_rearm.experiments.store import RunStore, record_problems

from test_experiments import MODEL_B, _fake_run, make_fake_mmrec


def complete(store_dir, seeds=3):
    """A fake MMRec, a 3-seed plan for model B (one configuration) and its store with every run done."""
    root = make_fake_mmrec(store_dir / "mmrec", {"B": MODEL_B})
    args = dict(seeds=seeds, results_dir=store_dir / "results", progress=None, target=None,
                overrides=["B.n_layers=1"])
    compare(root, "toy", ["B"], run_fn=_fake_run([]), **args)
    plan = build_plan(mmrec_src(root), "toy", ["B"], seeds, None, ["B.n_layers=1"])
    return root, args, plan, RunStore(store_dir / "results", "toy")


def rewrite_last_record(store, change):
    lines = store.path.read_text().splitlines()
    record = json.loads(lines[-1])
    change(record)
    lines[-1] = json.dumps(record)
    store.path.write_text("\n".join(lines) + "\n")
    return len(lines), record["key"]


@pytest.mark.parametrize("field", ["test", "valid", "seed", "config_id", "model"])
def test_a_record_missing_a_field_is_reported_not_counted_and_redone(tmp_path, field):
    root, args, plan, store = complete(tmp_path)
    line, key = rewrite_last_record(store, lambda r: r.pop(field))
    calls = []
    with pytest.warns(UserWarning, match=re.escape(f"line {line}: lacks field '{field}'")):
        report = compare(root, "toy", ["B"], run_fn=_fake_run(calls), **args)
    assert calls == [key]                                   # only the damaged run is redone
    assert len(report.summaries["B"].selected.test) == 3    # and all three seeds count
    assert report.executed == 1 and report.skipped == 2


def test_records_that_are_not_objects_or_have_wrong_types_are_reported(tmp_path):
    root, args, plan, store = complete(tmp_path)
    with open(store.path, "a") as handle:
        handle.write("[1, 2]\n")
        handle.write(json.dumps({"key": plan.runs[0].key, "status": "ok", "schema": 1, "dataset": "toy",
                                 "model": "B", "config_id": "x", "config": {}, "seed": "999",
                                 "valid": {"recall@20": "0.3"}, "test": {}}) + "\n")
    with pytest.warns(UserWarning) as caught:
        records, bad = store.read()
    messages = [str(w.message) for w in caught]
    assert bad == 2 and len(records) == 3
    assert any("line 4: is not a JSON object" in m for m in messages)
    assert any("line 5: field 'seed' is a str" in m and "field 'valid' holds" in m for m in messages)
    assert all("not counted; the run will be redone" in m for m in messages)


def test_a_record_of_another_dataset_or_a_newer_schema_is_not_counted(tmp_path):
    root, args, plan, store = complete(tmp_path)
    rewrite_last_record(store, lambda r: r.update(dataset="baby"))
    with pytest.warns(UserWarning, match="belongs to dataset 'baby', not 'toy'"):
        assert len(store.latest()) == 2
    rewrite_last_record(store, lambda r: r.update(dataset="toy", schema=99))
    with pytest.warns(UserWarning, match="schema 99 is newer than this package reads"):
        assert len(store.latest()) == 2


def test_appending_an_incomplete_record_is_refused():
    problems = record_problems({"key": "k", "status": "ok"}, "toy")
    assert "lacks field 'config_id'" in "; ".join(problems) and "lacks field 'test'" in "; ".join(problems)
    with pytest.raises(ConfigError, match="not a complete run record"):
        RunStore("/nonexistent", "toy").append({"key": "k", "status": "ok"})


def test_a_second_comparison_on_the_same_results_is_refused_while_the_first_runs(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec", {"B": MODEL_B})
    store = RunStore(tmp_path / "results", "toy")
    with store.exclusive():
        with pytest.raises(ConfigError, match="another comparison is running on this results folder"):
            compare(root, "toy", ["B"], results_dir=tmp_path / "results", progress=None,
                    run_fn=lambda *a: pytest.fail("a run started beside the running comparison"))
