"""experiments/: grid planning, resumable store, validation-only selection, Table 2 rendering,
DRAGON's user graph file, official split conversion, and the runner against a fake MMRec (real
subprocesses, no torch). One optional test trains LightGCN for one epoch in a copy of a real MMRec.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import MODEL_A, MODEL_B, fake_run as _fake_run, make_fake_mmrec, real_mmrec_runner_or_skip, record

from mmrec_rearm.data import read_interactions
from mmrec_rearm.errors import ConfigError, DatasetError, InstallError, RunsAbortedError
from mmrec_rearm.experiments import (compare, convert_official_splits, cooccurrence_neighbours,
                                     detect_feature_files, make_user_graph_dict, write_dataset_yaml)
from mmrec_rearm.experiments.datasets import MARKER
from mmrec_rearm.experiments.launch import launch
from mmrec_rearm.experiments.mmrec_config import merged_config, mmrec_src, parse_yaml_text
from mmrec_rearm.experiments.paper import paper_row
from mmrec_rearm.experiments.plan import RunSpec, build_plan, parse_overrides, run_key, seed_list
from mmrec_rearm.mmrec_output import parse_final_lines
from mmrec_rearm.experiments.stats import comparisons, paired_test, select_on_validation, summarise
from mmrec_rearm.experiments.store import RunStore
from mmrec_rearm.experiments.tables import report_markdown, table2_csv, table2_markdown

# ------------------------------------------------------------------------------------------------
# planning


def test_yaml_reads_exponent_only_numbers_as_floats_like_mmrec():
    assert parse_yaml_text("a: 1e-04\nb: [1e-02, 0.5, 2]\nc: '1e-3'") == {"a": 1e-4, "b": [0.01, 0.5, 2], "c": "1e-3"}


def test_plan_grid_pins_restrictions_and_coercion(tmp_path):
    src = mmrec_src(make_fake_mmrec(tmp_path, {"A": MODEL_A, "B": MODEL_B}))
    plan = build_plan(src, "toy", ["A", "B"], seeds=2, epochs=5,
                      overrides=["A.t=0.1", "B.n_layers=[2]", "v=1", "stopping_step=3"])
    # A: 't' pinned (leaves the grid); global v=1 becomes the float 1.0 (A's YAML values are floats)
    # and, being a scalar on a grid key, pins it too
    assert plan.configs["A"] == [{"v": 1.0, "t": 0.1, "stopping_step": 3}]
    # B: a list on a grid key restricts the candidates; v is not a grid key of B, passed as given
    assert plan.configs["B"] == [{"n_layers": 2, "v": 1.0, "stopping_step": 3}]
    assert [(r.model, r.seed) for r in plan.runs] == [("A", 999), ("A", 1000), ("B", 999), ("B", 1000)]
    assert plan.valid_metric == {"A": "recall@20", "B": "recall@20"}
    full = build_plan(src, "toy", ["A"], seeds=[5], epochs=None)
    assert full.configs["A"] == [{"v": 0.3, "t": 0.1}, {"v": 0.3, "t": 0.4}, {"v": 0.2, "t": 0.1},
                                 {"v": 0.2, "t": 0.4}]
    assert merged_config(src, "A", "toy")["hyper_parameters"] == ["seed", "v", "t"]


def test_plan_model_specific_override_wins_and_unknown_key_warns(tmp_path):
    src = mmrec_src(make_fake_mmrec(tmp_path, {"A": MODEL_A}))
    plan = build_plan(src, "toy", ["A"], 1, None, overrides=["A.t=0.4", "t=0.1", "A.typo_key=3"])
    assert plan.configs["A"][0]["t"] == 0.4
    assert any("typo_key" in w and "not in A's MMRec configuration" in w for w in plan.warnings)


@pytest.mark.parametrize("item, message", [
    ("A.seed=3", "set by the comparison itself"),
    ("Z.t=1", "model 'Z' is not among the compared models"),
    ("no_equals_sign", "expected MODEL.key=value"),
    ("A.bad-key=1", "not a configuration key name"),
])
def test_override_errors(item, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides([item], ["A"])


def test_seeds_and_run_keys():
    assert seed_list(3) == [999, 1000, 1001]
    assert seed_list([7, 3]) == [7, 3]
    with pytest.raises(ConfigError, match="repeats a seed"):
        seed_list([1, 1])
    with pytest.raises(ConfigError, match="at least 1 seed"):
        seed_list(0)
    assert run_key("d", "M", {"a": 1, "b": 2}, 1, 5) == run_key("d", "M", {"b": 2, "a": 1}, 1, 5)
    assert run_key("d", "M", {"a": 1}, 1, 5) != run_key("d", "M", {"a": 1}, 2, 5)
    assert run_key("d", "M", {"a": 1}, 1, 5) != run_key("d", "M", {"a": 1}, 1, None)


def test_unknown_model_names_the_fix(tmp_path):
    root = make_fake_mmrec(tmp_path, {"A": MODEL_A})
    # the hint names this checkout (tests/test_run.py runs it as printed)
    with pytest.raises(ConfigError, match=rf"REARM is not installed into this checkout.* install --mmrec {root}`"):
        compare(root, "toy", ["A", "REARM"], run_fn=lambda *a: {}, progress=None, results_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match=rf"MIGGT is not installed into this checkout.* install --mmrec {root}`"):
        compare(root, "toy", ["A", "MIGGT"], run_fn=lambda *a: {}, progress=None, results_dir=tmp_path / "r")


# ------------------------------------------------------------------------------------------------
# selection on validation, statistics, tables


def test_selection_uses_validation_even_when_test_disagrees():
    # config X wins on validation, Y would win on test (what MMRec's own grid would keep)
    recs = [record("M", {"x": 1}, s, {"recall@20": 0.30}, {"recall@20": 0.10}) for s in (1, 2)]
    recs += [record("M", {"x": 2}, s, {"recall@20": 0.20}, {"recall@20": 0.40}) for s in (1, 2)]
    # Z has the best validation value but only one of the two seeds finished: not eligible
    recs += [record("M", {"x": 3}, 1, {"recall@20": 0.90}, {"recall@20": 0.90})]
    summary = summarise(recs, {"M": "recall@20"}, ["M"])["M"]
    assert summary.selected.config == {"x": 1}
    assert summary.selected.mean("test", "recall@20") == pytest.approx(0.10)
    assert len(summary.configs) == 3


def test_selection_ties_keep_grid_order_and_failed_runs_are_listed():
    recs = [record("M", {"x": 1}, 1, {"recall@20": 0.2}, {}), record("M", {"x": 2}, 1, {"recall@20": 0.2}, {}),
            record("M", {"x": 3}, 1, {}, {}, status="failed")]
    summary = summarise(recs, {"M": "recall@20"}, ["M"])["M"]
    assert summary.selected.config == {"x": 1}
    assert [r["config"] for r in summary.failed] == [{"x": 3}]
    assert select_on_validation([], "recall@20") is None


def test_paired_t_test_matches_the_formula_and_needs_two_seeds():
    a = summarise([record("T", {}, s, {"recall@20": 1}, {"recall@20": v}) for s, v in zip((1, 2, 3), (0.30, 0.32, 0.34))]
                  + [record("B", {}, s, {"recall@20": 1}, {"recall@20": v}) for s, v in zip((1, 2, 4), (0.20, 0.23, 0.9))],
                  {"T": "recall@20", "B": "recall@20"}, ["T", "B"])
    row = paired_test(a["T"].selected, a["B"].selected, "recall@20")
    assert row.seeds == [1, 2]                      # paired over the seeds both finished
    diffs = [0.10, 0.09]
    mean_d = sum(diffs) / 2
    sd = math.sqrt(sum((d - mean_d) ** 2 for d in diffs) / 1)
    assert row.t == pytest.approx(mean_d / (sd / math.sqrt(2)))
    assert row.difference == pytest.approx(0.31 - 0.215)
    assert row.relative == pytest.approx((0.31 - 0.215) / 0.215)
    single = summarise([record("T", {}, 1, {"recall@20": 1}, {"recall@20": 0.3}),
                        record("B", {}, 1, {"recall@20": 1}, {"recall@20": 0.2})],
                       {"T": "recall@20", "B": "recall@20"}, ["T", "B"])
    one = paired_test(single["T"].selected, single["B"].selected, "recall@20")
    assert (one.t, one.p) == (None, None)


def _table_records():
    lg = [({"recall@10": 0.05, "recall@20": 0.08, "ndcg@10": 0.03, "ndcg@20": 0.04}),
          ({"recall@10": 0.06, "recall@20": 0.09, "ndcg@10": 0.04, "ndcg@20": 0.05})]
    re_ = [({"recall@10": 0.07, "recall@20": 0.11, "ndcg@10": 0.04, "ndcg@20": 0.05}),
           ({"recall@10": 0.08, "recall@20": 0.12, "ndcg@10": 0.05, "ndcg@20": 0.06})]
    recs = [record("LightGCN", {"n_layers": 2}, s, {"recall@20": 0.1}, t) for s, t in zip((1, 2), lg)]
    recs += [record("REARM", {}, s, {"recall@20": 0.2}, t) for s, t in zip((1, 2), re_)]
    return summarise(recs, {"LightGCN": "recall@20", "REARM": "recall@20"}, ["REARM", "LightGCN"])


def test_table2_markdown_exact_with_paper_numbers_beside():
    text = table2_markdown("baby", _table_records(), ["REARM", "LightGCN"], "REARM")
    assert text == (
        "| Model | R@10 | R@10 (paper) | R@20 | R@20 (paper) | N@10 | N@10 (paper) | N@20 | N@20 (paper) | seeds |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        "| LightGCN | <u>0.0550 ± 0.0071</u> | 0.0479 | <u>0.0850 ± 0.0071</u> | 0.0754 | <u>0.0350 ± 0.0071</u> | "
        "0.0257 | <u>0.0450 ± 0.0071</u> | 0.0328 | 2 |\n"
        "| REARM | **0.0750 ± 0.0071** | 0.0705 | **0.1150 ± 0.0071** | 0.1105 | **0.0450 ± 0.0071** | "
        "0.0377 | **0.0550 ± 0.0071** | 0.0479 | 2 |\n")
    plain = table2_markdown("tiktok", _table_records(), ["REARM", "LightGCN"], "REARM")
    assert plain.splitlines()[0] == "| Model | R@10 | R@20 | N@10 | N@20 | seeds |"
    summaries = _table_records()
    report = report_markdown("baby", summaries, ["REARM", "LightGCN"], comparisons(summaries, "REARM"), "REARM", "s")
    assert "| LightGCN | +36.36% (p<0.001, n=2) | +35.29% (p<0.001, n=2) |" in report
    assert "- R@20: LightGCN, REARM 0.1150 vs 0.0850, +35.29% (p<0.001, n=2)" in report


def test_table2_shows_the_paper_row_name_and_numbers_of_an_mmrec_model_named_otherwise():
    tests = {"recall@10": 0.06, "recall@20": 0.10, "ndcg@10": 0.03, "ndcg@20": 0.04}
    recs = [record("MIGGT", {}, s, {"recall@20": 0.1}, tests) for s in (1, 2)]
    summaries = summarise(recs, {"MIGGT": "recall@20"}, ["MIGGT"])
    row = table2_markdown("baby", summaries, ["MIGGT"], None).splitlines()[2]
    assert row.startswith("| MIG-GT | ") and "| 0.0665 |" in row and "| 0.1021 |" in row
    assert paper_row("sports", "MIGGT") == paper_row("sports", "MIG-GT") == (0.0753, 0.1130, 0.0414, 0.0511)


#: the 19 Table-2 models by their MMRec names (MIG-GT runs as MIGGT)
TABLE2_MODELS = ("BPR", "LightGCN", "ApeGNN", "MGDN", "VBPR", "MMGCN", "DualGNN", "GRCN", "LATTICE", "BM3",
                 "SLMRec", "MICRO", "MGCN", "DiffMM", "FREEDOM", "LGMRec", "DRAGON", "MIGGT", "REARM")


def test_table2_keeps_the_paper_row_order_with_its_numbers_beside_all_19_rows():
    tests = {"recall@10": 0.05, "recall@20": 0.08, "ndcg@10": 0.03, "ndcg@20": 0.04}
    shuffled = list(TABLE2_MODELS[::-1][1:]) + ["Mine", "REARM"]  # REARM requested last, an unlisted model
    recs = [record(m, {}, 1, {"recall@20": 0.1}, tests) for m in shuffled]
    summaries = summarise(recs, {m: "recall@20" for m in shuffled}, shuffled)
    rows = table2_markdown("sports", summaries, ["REARM"] + shuffled[:-1], "REARM").splitlines()[2:]
    names = [row.split(" | ")[0].lstrip("| ") for row in rows]
    paper = [m if m != "MIGGT" else "MIG-GT" for m in TABLE2_MODELS]
    assert names == paper[:-1] + ["Mine", "REARM"]
    for name, row in zip(names, rows):
        cells = row.strip("|").split(" | ")
        published = paper_row("sports", name)
        if name == "Mine":
            assert published is None and cells[2] == "—"
        else:
            assert cells[2::2][:4] == [f"{v:.4f}" for v in published], name  # R@10 .. N@20 (paper)
    assert [r.split(" | ")[0].lstrip("| ") for r in table2_markdown("tiktok", summaries, shuffled, "REARM")
            .splitlines()[2:]] == names  # the same order without the paper's numbers


def test_report_names_the_host_fixes_of_the_selected_runs():
    fix = "DRAGON.result_embed: CPU-registered Parameter (5, 2) made a plain tensor, as .to(device) gives on a GPU"
    recs = [dict(record("DRAGON", {}, s, {"recall@20": 0.1}, {"recall@20": 0.1}), host_fixes=[fix]) for s in (1, 2)]
    recs += [record("REARM", {}, s, {"recall@20": 0.2}, {"recall@20": 0.2}) for s in (1, 2)]
    summaries = summarise(recs, {"DRAGON": "recall@20", "REARM": "recall@20"}, ["REARM", "DRAGON"])
    assert summaries["DRAGON"].selected.host_fixes == {1: [fix], 2: [fix]}
    report = report_markdown("tiktok", summaries, ["REARM", "DRAGON"], comparisons(summaries, "REARM"), "REARM", "s")
    assert "## Host fixes applied by the runner" in report
    assert f"- DRAGON (seeds 1, 2): {fix}\n" in report
    clean = _table_records()
    assert "Host fixes" not in report_markdown("baby", clean, ["REARM", "LightGCN"], [], "REARM", "s")


def test_table2_csv_exact():
    assert table2_csv("baby", _table_records(), ["REARM", "LightGCN"], "REARM") == (
        "model,seeds,R@10,R@10_std,R@10_paper,R@20,R@20_std,R@20_paper,N@10,N@10_std,N@10_paper,"
        "N@20,N@20_std,N@20_paper,valid_metric,valid_mean,config,capped_seeds\n"
        "LightGCN,2,0.055000,0.007071,0.0479,0.085000,0.007071,0.0754,0.035000,0.007071,0.0257,"
        "0.045000,0.007071,0.0328,recall@20,0.100000,\"{\"\"n_layers\"\": 2}\",\n"
        "REARM,2,0.075000,0.007071,0.0705,0.115000,0.007071,0.1105,0.045000,0.007071,0.0377,"
        "0.055000,0.007071,0.0479,recall@20,0.200000,{},\n")


# ------------------------------------------------------------------------------------------------
# the store and resume


def _record(key: str, status: str = "ok") -> dict:
    metrics = {"valid": {"recall@20": 0.1}, "test": {"recall@20": 0.1}} if status == "ok" else {}
    return {"schema": 1, "key": key, "status": status, "dataset": "d", "model": "A", "config_id": "c",
            "config": {}, "seed": 999, **metrics}


def test_store_skips_truncated_line_and_next_append_starts_a_new_line(tmp_path):
    store = RunStore(tmp_path, "d")
    store.append(_record("a"))
    with open(store.path, "ab") as handle:
        handle.write(b'{"key": "b", "sta')           # killed mid-write
    store.append(_record("c", "failed"))
    with pytest.warns(UserWarning, match="line 2: is not a complete JSON record"):
        records, bad = store.read()
    assert [r["key"] for r in records] == ["a", "c"] and bad == 1
    with pytest.raises(ConfigError, match="not a complete run record .*lacks field 'status'"):
        store.append({"key": "x"})


def test_resume_after_interruption_runs_only_the_missing_runs(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A, "B": MODEL_B})
    results = tmp_path / "results"
    args = dict(seeds=2, epochs=3, results_dir=results, progress=None, target="A")
    plan = build_plan(mmrec_src(root), "toy", ["A", "B"], 2, 3)
    assert len(plan.runs) == 12                       # A: 4 configs, B: 2 configs, x 2 seeds

    first = []
    with pytest.raises(KeyboardInterrupt):
        compare(root, "toy", ["A", "B"], run_fn=_fake_run(first, interrupt_at=4), **args)
    assert first == [r.key for r in plan.runs[:4]]
    store = RunStore(results, "toy")
    assert [r["key"] for r in store.read()[0]] == [r.key for r in plan.runs[:3]]
    # a kill while writing run 4's line leaves half a line behind
    line = json.dumps({"key": plan.runs[3].key, "status": "ok", "valid": {}})
    with open(store.path, "a") as handle:
        handle.write(line[: len(line) // 2])

    second = []
    with pytest.warns(UserWarning, match="not a complete JSON record"):
        report = compare(root, "toy", ["A", "B"], run_fn=_fake_run(second), **args)
    assert second == [r.key for r in plan.runs[3:]]
    assert (report.executed, report.skipped, report.failed) == (9, 3, 0)

    third = []
    with pytest.warns(UserWarning):
        again = compare(root, "toy", ["A", "B"], run_fn=_fake_run(third), **args)
    assert third == [] and again.skipped == 12
    # validation picks v=0.3 (its test is 0.1 or 0.4 depending on t: the better valid wins, ties in order)
    assert again.summaries["A"].selected.config == {"v": 0.3, "t": 0.1}
    assert (results / "toy" / "table2.md").read_text().startswith("# Table 2 layout: toy")


def test_failed_runs_are_recorded_retried_by_default_and_kept_on_request(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec", {"B": MODEL_B})
    results = tmp_path / "results"
    plan = build_plan(mmrec_src(root), "toy", ["B"], 1, None)
    bad = plan.runs[0].key
    report = compare(root, "toy", ["B"], run_fn=_fake_run([], fail_keys={bad}), results_dir=results, progress=None)
    assert report.failed == 1
    assert "torch_geometric" in (results / "toy" / "table2.md").read_text()
    kept = []
    compare(root, "toy", ["B"], run_fn=_fake_run(kept), results_dir=results, progress=None, retry_failed=False)
    assert kept == []
    retried = []
    final = compare(root, "toy", ["B"], run_fn=_fake_run(retried), results_dir=results, progress=None)
    assert retried == [bad] and final.failed == 0
    assert final.summaries["B"].failed == []          # the last attempt of each run counts


def test_dry_run_lists_pending_runs_and_runs_nothing(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec", {"B": MODEL_B})
    lines, calls = [], []
    report = compare(root, "toy", ["B"], seeds=2, run_fn=_fake_run(calls), execute=False,
                     results_dir=tmp_path / "r", progress=lines.append)
    assert calls == [] and report.executed == 0
    assert [l for l in lines if l.startswith("run ")] == [
        "run 1 of 4: B seed 999 config {n_layers: 1} - not run (execute=False)",
        "run 2 of 4: B seed 1000 config {n_layers: 1} - not run (execute=False)",
        "run 3 of 4: B seed 999 config {n_layers: 2} - not run (execute=False)",
        "run 4 of 4: B seed 1000 config {n_layers: 2} - not run (execute=False)"]
    assert not (root / "data" / "toy" / "user_graph_dict.npy").exists()


# ------------------------------------------------------------------------------------------------
# the runner in a real subprocess against the fake MMRec


def test_compare_through_the_runner_subprocess(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A, "G": "needs_geometric: 1\nuser_graph: 1\n"})
    lines = []
    report = compare(root, "toy", ["A", "G"], seeds=1, epochs=3, results_dir=tmp_path / "results",
                     python=sys.executable, progress=lines.append, target="A", overrides=["A.t=0.3"])
    text = "\n".join(lines)
    assert "run 1 of 3: A seed 999 config {v: 0.3, t: 0.3}" in text
    assert "    epoch   1/3 " in text
    assert "loss 0.5000  valid recall@20 0.3000  best 0.3000 (epoch 1) *" in text
    assert "built" in text and (root / "data" / "toy" / "user_graph_dict.npy").is_file()
    records = {(r["model"], r["config"].get("v")): r for r in RunStore(tmp_path / "results", "toy").read()[0]}
    ok = records[("A", 0.3)]
    assert ok["status"] == "ok" and ok["result_source"] == "trainer" and ok["best_epoch"] == 1
    assert ok["test"]["recall@20"] == pytest.approx(0.3 + 0.999) and ok["epochs_run"] == 3
    assert Path(ok["log_path"]).is_file()
    failed = records[("G", None)]
    assert failed["status"] == "failed" and failed["missing_package"] == "not_installed_geometric_pkg"
    assert "missing Python package 'not_installed_geometric_pkg'" in failed["message"]
    assert report.summaries["A"].selected.config == {"v": 0.3, "t": 0.3}


def test_user_graph_key_missing_from_dataset_yaml_is_passed_to_the_runs(tmp_path):
    # DRAGON joins the data folder with config['user_graph_dict_file']; a dataset YAML without the
    # key (e.g. one written before the model was added) must not make it crash on None.
    root = make_fake_mmrec(tmp_path / "mmrec", {"G": "user_graph: 1\n"})
    yaml_path = mmrec_src(root) / "configs" / "dataset" / "toy.yaml"
    yaml_path.write_text("USER_ID_FIELD: userID\ninter_file_name: 'toy.inter'\n")
    seen, lines = [], []

    def run(spec, extra, on_event):
        seen.append(dict(extra))
        return {"status": "ok", "valid": {"recall@20": 0.1}, "test": {"recall@20": 0.1}, "best_epoch": 0,
                "wall_s": 0.1}

    compare(root, "toy", ["G"], run_fn=run, results_dir=tmp_path / "res", progress=lines.append, target="")
    assert seen == [{"user_graph_dict_file": "user_graph_dict.npy"}]
    assert (root / "data" / "toy" / "user_graph_dict.npy").is_file()
    assert any("has no user_graph_dict_file" in line for line in lines)

    seen.clear()  # with the key in the YAML nothing is added
    yaml_path.write_text("USER_ID_FIELD: userID\ninter_file_name: 'toy.inter'\nuser_graph_dict_file: 'ug.npy'\n")
    compare(root, "toy", ["G"], seeds=[5], run_fn=run, results_dir=tmp_path / "res", progress=None, target="")
    assert seen == [{}] and (root / "data" / "toy" / "ug.npy").is_file()


def test_runner_reports_a_crashed_process(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A})
    spec = RunSpec("toy", "A", {"crash": True}, 1, None)
    result = launch(spec, root / "src", sys.executable, tmp_path / "logs")
    assert result["status"] == "failed" and result["returncode"] == 7
    assert "exited with code 7 without writing a result" in result["message"]


def test_runner_falls_back_to_mmrec_log_lines_without_get_trainer(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A})
    result = launch(RunSpec("toy", "A", {"direct": True, "v": 0.123456}, 1, None), root / "src",
                    sys.executable, tmp_path / "logs")
    assert result["status"] == "ok" and result["result_source"] == "log"
    assert result["valid"]["recall@20"] == 0.1245              # 0.124456, as logged with 4 decimals
    assert result["mmrec_log"].endswith("A-toy.log")


def test_final_log_lines_parser():
    text = ("x INFO best valid result: recall@10: 0.0500    recall@20: 0.0800    \n"
            "x INFO test result: \nrecall@10: 0.1\n"
            "x INFO test result: recall@10: 0.0400    recall@20: 0.0700    \n")
    assert parse_final_lines(text) == ({"recall@10": 0.05, "recall@20": 0.08}, {"recall@10": 0.04, "recall@20": 0.07})
    assert parse_final_lines("nothing") == (None, None)


# ------------------------------------------------------------------------------------------------
# DRAGON / DualGNN user graph


def test_user_graph_file_reads_back_the_way_dragon_reads_it(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    # training: u0 {0,1,2}, u1 {1,2}, u2 {0}, u3 {2,3}, u4 {5}; u5 only in test; (0,1) duplicated
    rows = [(0, 0, 0), (0, 1, 0), (0, 1, 0), (0, 2, 0), (1, 1, 0), (1, 2, 0), (2, 0, 0), (3, 2, 0),
            (3, 3, 0), (4, 5, 0), (5, 1, 2), (2, 3, 1)]
    (folder / "toy.inter").write_text("userID\titemID\tx_label\n" + "".join(f"{u}\t{i}\t{x}\n" for u, i, x in rows))
    path = make_user_graph_dict(folder, k=2)
    graph = np.load(path, allow_pickle=True).item()          # exactly what dragon.py / dualgnn.py do
    assert graph == {0: [[1, 2], [2.0, 1.0]],                 # u1 shares 2 items; u2 and u3 tie -> lower id
                     1: [[0, 3], [2.0, 1.0]],
                     2: [[0], [1.0]],
                     3: [[0, 1], [1.0, 1.0]],
                     4: [[], []],
                     5: [[], []]}
    k = 3
    for i in range(len(graph)):                               # the indexing of DRAGON.topk_sample
        sample, weight = graph[i][0][:k], graph[i][1][:k]
        assert isinstance(sample, list) and isinstance(weight, list)
        if 0 < len(sample) < k:
            sample.append(sample[0])
            weight.append(weight[0])
        assert all(isinstance(w, float) for w in weight)
    torch = pytest.importorskip("torch")
    weights = torch.softmax(torch.tensor(graph[0][1][:k]), dim=0)   # DRAGON's user_aggr_mode 'softmax'
    assert weights.dtype.is_floating_point and float(weights.sum()) == pytest.approx(1.0)


def test_user_graph_from_a_checkout_and_the_cli_handlers(tmp_path):
    import argparse
    from mmrec_rearm.experiments import add_subcommands

    root = make_fake_mmrec(tmp_path, {"A": MODEL_A})
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["user-graph", "--mmrec", str(root), "-d", "toy", "--k", "1"])
    assert args.handler(args) == 0
    graph = np.load(root / "data" / "toy" / "user_graph_dict.npy", allow_pickle=True).item()
    # toy training: u0 {0,1}, u1 {1,2}, u2 {0}; u0 ties u1 and u2 at one shared item -> lower id
    assert graph == {0: [[1], [1.0]], 1: [[0], [1.0]], 2: [[0], [1.0]]}
    bad = parser.parse_args(["user-graph", "--mmrec", str(root)])
    with pytest.raises(ConfigError, match="needs -d/--dataset"):
        bad.handler(bad)
    run = parser.parse_args(["compare", "--mmrec", "m", "-d", "x", "-m", "A", "B", "--set", "A.k=1", "k=2",
                             "--seeds", "3", "--dry-run"])
    assert (run.models, run.set, run.seeds, run.dry_run) == (["A", "B"], ["A.k=1", "k=2"], 3, True)


def test_user_graph_matches_a_dense_count_on_random_data():
    import scipy.sparse as sp
    rng = np.random.default_rng(3)
    dense = (rng.random((60, 25)) < 0.15).astype(np.float32)
    graph = cooccurrence_neighbours(sp.csr_matrix(dense), k=5, block_rows=7)
    shared = dense @ dense.T
    np.fill_diagonal(shared, 0)
    for user in range(60):
        order = sorted((c for c in range(60) if shared[user, c] > 0), key=lambda c: (-shared[user, c], c))[:5]
        assert graph[user] == [order, [float(shared[user, c]) for c in order]]


# ------------------------------------------------------------------------------------------------
# official splits and dataset YAML


def test_convert_official_splits_round_trip(tmp_path):
    folder = tmp_path / "offi"
    folder.mkdir()
    train = np.array([[0, 0, 1, 2], [3, 0, 1, 2]], dtype=np.int64)   # (2, n): users, 0-based items
    valid = np.array([[0], [1]], dtype=np.int64)
    test = np.array([[1, 2], [0, 3]], dtype=np.int64)
    for name, arr in (("train", train), ("valid", valid), ("test", test)):
        np.save(folder / f"{name}.npy", arr)
    inter = convert_official_splits(folder)
    assert inter == folder / "offi.inter"
    parsed = read_interactions(inter)
    assert parsed.users.tolist() == [0, 0, 1, 2, 0, 1, 2]
    assert parsed.items.tolist() == [3, 0, 1, 2, 1, 0, 3]
    assert parsed.labels.tolist() == [0, 0, 0, 0, 1, 2, 2]
    back = {label: np.stack([parsed.users[parsed.labels == label], parsed.items[parsed.labels == label]])
            for label in (0, 1, 2)}
    for label, arr in ((0, train), (1, valid), (2, test)):
        np.testing.assert_array_equal(back[label], arr)
    assert convert_official_splits(folder) == inter           # same content: no error, no change
    np.save(folder / "valid.npy", np.array([[1], [1]]))
    with pytest.raises(DatasetError, match="exists with different content"):
        convert_official_splits(folder)
    assert convert_official_splits(folder, overwrite=True, name="renamed", out_dir=tmp_path / "o").name == "renamed.inter"


@pytest.mark.parametrize("array, message", [
    (np.zeros((3, 3), dtype=np.int64), r"shape \(3, 3\)"),
    (np.array([[0, -1], [1, 2]]), "negative id"),
    (np.array([[0.5, 1.0], [1.0, 2.0]]), "non-integer ids"),
    (np.array([[None, 1], [1, 2]], dtype=object), "pickled objects"),
])
def test_convert_official_splits_errors(tmp_path, array, message):
    for name in ("train", "valid", "test"):
        np.save(tmp_path / f"{name}.npy", np.array([[0], [0]]))
    np.save(tmp_path / "valid.npy", array, allow_pickle=True)
    with pytest.raises(DatasetError, match=message):
        convert_official_splits(tmp_path)


def test_write_dataset_yaml_marks_refuses_foreign_and_loads_in_mmrec_terms(tmp_path):
    root = make_fake_mmrec(tmp_path, {"A": MODEL_A})
    data = tmp_path / "tiktokish"
    data.mkdir()
    np.save(data / "image_feat.npy", np.zeros((2, 2), np.float32))
    np.save(data / "audio_feat.npy", np.zeros((2, 2), np.float32))
    vision, text, note = detect_feature_files(data)
    assert (vision, text) == ("image_feat.npy", "audio_feat.npy") and "text_feature_file" in note
    path = write_dataset_yaml(root, "tiktokish", vision_feature_file=vision, text_feature_file=text, note=note)
    assert path.read_text().splitlines()[0] == MARKER
    config = merged_config(mmrec_src(root), "A", "tiktokish")
    assert (config["inter_file_name"], config["text_feature_file"], config["field_separator"]) == \
        ("tiktokish.inter", "audio_feat.npy", "\t")
    assert write_dataset_yaml(root, "tiktokish", vision_feature_file=vision, text_feature_file=text, note=note) == path
    with pytest.raises(InstallError, match="differs from the new one"):
        write_dataset_yaml(root, "tiktokish")
    with pytest.raises(InstallError, match="not written by mmrec-rearm"):
        write_dataset_yaml(root, "toy")
    with pytest.raises(DatasetError, match="plain folder name"):
        write_dataset_yaml(root, "../x")


def test_compare_stages_an_outside_data_dir_and_writes_its_yaml(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A})
    outside = tmp_path / "shared" / "newset"
    outside.mkdir(parents=True)
    (outside / "newset.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n1\t0\t0\n0\t1\t2\n")
    np.save(outside / "image_feat.npy", np.zeros((2, 2), np.float32))
    seen = []

    def run(spec, extra, on_event):
        seen.append(extra)
        return {"status": "ok", "valid": {"recall@20": 0.1}, "test": {"recall@20": 0.1}}

    compare(root, "newset", ["A"], data_dir=outside, results_dir=tmp_path / "res", run_fn=run, progress=None,
            overrides=["A.v=0.3", "A.t=0.1"])
    staged = tmp_path / "res" / "newset" / "data" / "newset"
    assert seen == [{"data_path": str(staged.parent) + os.sep}]
    assert (staged / "newset.inter").is_symlink()
    assert (root / "src" / "configs" / "dataset" / "newset.yaml").read_text().startswith(MARKER)


# ------------------------------------------------------------------------------------------------
# optional: one real MMRec run (LightGCN, 1 epoch, tiny synthetic data) in a copy of the checkout

def test_real_mmrec_lightgcn_one_epoch_through_the_runner(tmp_path):
    checkout_src, mmrec_python = real_mmrec_runner_or_skip("REAL-MMREC SMOKE TEST")
    from mmrec_rearm.synth import make_demo_dataset

    clone = tmp_path / "MMRec"
    shutil.copytree(checkout_src, clone / "src", ignore=shutil.ignore_patterns("log", "__pycache__", "saved"))
    make_demo_dataset(clone / "data", "demo", n_users=120, n_items=80, seed=0)
    report = compare(clone, "demo", ["LightGCN"], seeds=1, epochs=1, results_dir=tmp_path / "results",
                     python=mmrec_python, overrides=["LightGCN.n_layers=1", "LightGCN.reg_weight=1e-4",
                                                     "use_gpu=False"], progress=None, timeout_s=240)
    (rec,) = RunStore(tmp_path / "results", "demo").read()[0]
    assert rec["status"] == "ok", rec.get("message")
    assert rec["result_source"] == "trainer" and rec["best_epoch"] == 0 and rec["epochs_run"] == 1
    assert set(rec["test"]) >= {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
    assert 0.0 < rec["valid"]["recall@20"] <= 1.0
    assert report.summaries["LightGCN"].selected is not None
    assert (clone / "src" / "configs" / "dataset" / "demo.yaml").read_text().startswith(MARKER)


def test_cpu_parameter_fix_gives_the_gpu_behaviour():
    torch = pytest.importorskip("torch")
    from mmrec_rearm.experiments.runner_fixes import unregister_cpu_parameters

    class Buggy(torch.nn.Module):  # the pattern of MMRec's DRAGON / DualGNN
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(3, 2))
            self.result_embed = torch.nn.Parameter(torch.arange(6.0).view(3, 2)).to("cpu")

        def forward(self):
            self.result_embed = self.weight * 2
            return self.result_embed.sum()

    model = Buggy()
    with pytest.raises(TypeError, match="cannot assign .* as parameter 'result_embed'"):
        model()
    model = Buggy()
    changed = unregister_cpu_parameters(model, ("result_embed",))
    assert len(changed) == 1 and "Buggy.result_embed" in changed[0]
    assert [name for name, _ in model.named_parameters()] == ["weight"]
    assert "result_embed" not in model.state_dict()
    assert torch.equal(model.result_embed, torch.arange(6.0).view(3, 2)) and model.result_embed.requires_grad
    model().backward()
    assert torch.equal(model.weight.grad, torch.full((3, 2), 2.0))
    assert unregister_cpu_parameters(model, ("result_embed",)) == []  # nothing left to change


def test_real_mmrec_dragon_runs_on_cpu_with_the_host_fix_and_fails_without(tmp_path, monkeypatch):
    checkout_src, mmrec_python = real_mmrec_runner_or_skip("REAL-MMREC DRAGON TEST")
    if importlib.util.find_spec("torch_geometric") is None and mmrec_python == sys.executable:
        pytest.skip("REAL-MMREC DRAGON TEST SKIPPED: DRAGON needs torch_geometric, not installed here")
    from mmrec_rearm.synth import make_demo_dataset

    clone = tmp_path / "MMRec"
    shutil.copytree(checkout_src, clone / "src", ignore=shutil.ignore_patterns("log", "__pycache__", "saved"))
    make_demo_dataset(clone / "data", "demo", n_users=120, n_items=80, seed=0)
    pins = ["DRAGON.learning_rate=1e-4", "DRAGON.reg_weight=1e-3", "use_gpu=False"]
    compare(clone, "demo", ["DRAGON"], seeds=1, epochs=1, results_dir=tmp_path / "fixed", python=mmrec_python,
            overrides=pins, progress=None, timeout_s=240, target=None)
    (rec,) = RunStore(tmp_path / "fixed", "demo").read()[0]
    assert rec["status"] == "ok", rec.get("message")
    assert rec["epochs_run"] == 1 and 0.0 <= rec["test"]["recall@20"] <= 1.0
    assert len(rec["host_fixes"]) == 1 and rec["host_fixes"][0].startswith("DRAGON.result_embed")

    monkeypatch.setenv("MMREC_REARM_HOST_FIXES", "0")  # as MMRec ships it: the known CPU failure
    compare(clone, "demo", ["DRAGON"], seeds=1, epochs=1, results_dir=tmp_path / "as_shipped",
            python=mmrec_python, overrides=pins, progress=None, timeout_s=240, target=None)
    (rec,) = RunStore(tmp_path / "as_shipped", "demo").read()[0]
    assert rec["status"] == "failed" and "as parameter 'result_embed'" in rec["message"]
    assert "MMREC_REARM_HOST_FIXES=0" in rec["hint"] and "host_fixes" not in rec


# ------------------------------------------------------------------------------------------------
# user-given paths are the user's: relative to the working directory, never to MMRec's src/


def test_compare_with_a_relative_results_folder_runs_through_the_runner(tmp_path, monkeypatch):
    # The README's command uses the default --results results: the runner starts in MMRec's src/
    # and must still find its spec file and write its result and checkpoint where the user is.
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A})
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    report = compare(root, "toy", ["A"], seeds=1, epochs=2, results_dir="results", python=sys.executable,
                     progress=None, target="", overrides=["A.v=0.3", "A.t=0.1"])
    assert report.failed == 0 and report.executed == 1
    (record,) = RunStore(work / "results", "toy").read()[0]
    assert record["status"] == "ok", record.get("message")
    assert Path(record["log_path"]).is_absolute() and Path(record["log_path"]).is_file()
    assert str(work / "results" / "toy" / "logs") in record["log_path"]
    assert not (root / "src" / "results").exists()
    assert (work / "results" / "toy" / "table2.md").is_file()


def test_compare_resolves_a_relative_data_dir_against_the_working_directory(tmp_path, monkeypatch):
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A})
    outside = tmp_path / "shared" / "newset"
    outside.mkdir(parents=True)
    (outside / "newset.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n1\t0\t0\n0\t1\t2\n")
    np.save(outside / "image_feat.npy", np.zeros((2, 2), np.float32))
    (outside / ".rearm_cache").mkdir()           # a cache of an earlier direct run must not be shared
    monkeypatch.chdir(tmp_path)
    seen = []

    def run(spec, extra, on_event):
        seen.append(extra)
        return {"status": "ok", "valid": {"recall@20": 0.1}, "test": {"recall@20": 0.1}}

    # --dry-run already resolves the staged folder (it failed against MMRec's src/ before)
    compare(root, "newset", ["A"], data_dir="shared/newset", results_dir="res", execute=False, progress=None,
            overrides=["A.v=0.3", "A.t=0.1"], target="")
    compare(root, "newset", ["A"], data_dir="shared/newset", results_dir="res", run_fn=run, progress=None,
            overrides=["A.v=0.3", "A.t=0.1"], target="")
    staged = tmp_path / "res" / "newset" / "data" / "newset"
    assert seen == [{"data_path": str(staged.parent) + os.sep}]
    assert (staged / "newset.inter").is_symlink()
    assert not (staged / ".rearm_cache").exists()   # REARM makes its own cache in the staged folder


def test_rearm_cache_of_a_staged_dataset_stays_in_the_staged_folder(tmp_path):
    from mmrec_rearm.cache import resolve_cache_dir
    from mmrec_rearm.data import TrainingData

    source = tmp_path / "shared" / "set"
    source.mkdir(parents=True)
    (source / "set.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n")
    staged = tmp_path / "res" / "set"
    staged.mkdir(parents=True)
    (staged / "set.inter").symlink_to(source / "set.inter")
    data = TrainingData.from_arrays(np.array([0]), np.array([0]), 1, 1, {"image": np.ones((1, 2), np.float32)},
                                    source={"inter": str(staged / "set.inter")})
    assert resolve_cache_dir(data) == staged / ".rearm_cache"


def test_compare_stops_after_three_identical_crashes_with_one_message(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A})
    calls, lines = [], []

    def run(spec, extra, on_event):
        calls.append(spec.key)
        return {"status": "failed", "wall_s": 0.0, "log_path": f"/x/{spec.key}.log",
                "message": f"FileNotFoundError: [Errno 2] No such file or directory: 'logs/A-{spec.key}.json'",
                "error": "Traceback ..."}

    with pytest.raises(RunsAbortedError, match=r"3 runs in a row failed with the same error.*FileNotFoundError"):
        compare(root, "toy", ["A"], seeds=3, run_fn=run, results_dir=tmp_path / "r", progress=lines.append)
    assert len(calls) == 3                                     # of 12 planned
    assert len(RunStore(tmp_path / "r", "toy").read()[0]) == 3  # recorded, retried by the next compare


def test_compare_goes_on_after_failures_that_differ_or_are_not_crashes(tmp_path):
    root = make_fake_mmrec(tmp_path / "mmrec", {"A": MODEL_A})
    calls = []

    def run(spec, extra, on_event):
        calls.append(spec.key)
        if len(calls) % 2:  # a training outcome (no crash): never a reason to stop
            return {"status": "failed", "message": "training never produced a validated epoch", "wall_s": 1.0}
        return {"status": "failed", "message": f"RuntimeError: run {len(calls)} broke", "error": "x", "wall_s": 1.0}

    report = compare(root, "toy", ["A"], seeds=2, run_fn=run, results_dir=tmp_path / "r", progress=None)
    assert len(calls) == 8 and report.failed == 8
