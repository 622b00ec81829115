"""All 19 models of the paper's Table 2 through one ``mmrec-rearm compare`` call on the real MMRec:
MMRec's 13 and our six (REARM and the five baselines MMRec lacks), on a tiny seeded demo dataset
(60 users x 50 items), 1 epoch each, every model's search grid pinned to its first point, two runs
at once. Six of MMRec's models cannot run as shipped on a CPU-only host without torch_scatter; the
run process fixes them in memory (experiments/runner_fixes.py): DRAGON and DualGNN's CPU-registered
parameter, LATTICE, GRCN and MGCN's unconditional ``.cuda()``, SLMRec and MGCN's torch_scatter import.
SLMRec also imports scikit-learn (scripts/setup.sh installs it).

Same requirements and skips as tests/test_integration_mmrec.py (a git checkout of MMRec, never
touched: the test works on a temporary clone; an interpreter with MMRec's pins and torch_geometric).
Checked: every run finished, with a finite loss and valid / test metrics in [0, 1]; table2.md has
the 19 rows in the paper's order (MIGGT as "MIG-GT"), each marked as stopped at the epoch cap;
uninstall restores the clone's ``git status``.
"""
from __future__ import annotations

import importlib.util
import json
import math

import pytest

torch = pytest.importorskip("torch")

from mmrec_rearm import cli  # noqa: E402
from mmrec_rearm import install as inst  # noqa: E402
from mmrec_rearm import quickstart as qs  # noqa: E402
from mmrec_rearm.experiments.mmrec_config import grid_keys, grid_values, merged_config  # noqa: E402
from mmrec_rearm.experiments.paper import PAPER_ROWS, paper_name  # noqa: E402
from mmrec_rearm.experiments.tables import CAPPED  # noqa: E402

from test_integration_mmrec import METRIC_KEYS, porcelain, runnable_clone  # noqa: E402,F401

#: the 19 Table-2 models by their MMRec names, in the paper's row order
MODELS = ("BPR", "LightGCN", "ApeGNN", "MGDN", "VBPR", "MMGCN", "DualGNN", "GRCN", "LATTICE", "BM3",
          "SLMRec", "MICRO", "MGCN", "DiffMM", "FREEDOM", "LGMRec", "DRAGON", "MIGGT", "REARM")
USERS, ITEMS = 60, 50


def first_grid_point(src, models, dataset) -> list:
    """``--set`` items pinning every grid key of every model to its first candidate (a one-element
    list sets a grid key's candidates, whatever the type of the value)."""
    pins = []
    for model in models:
        config = merged_config(src, model, dataset)
        pins += [f"{model}.{key}=[{json.dumps(grid_values(config, key)[0])}]" for key in grid_keys(config)]
    return pins


def test_compare_runs_all_19_table2_models_end_to_end(runnable_clone, monkeypatch):
    if importlib.util.find_spec("torch_geometric") is None:
        pytest.skip("TABLE-2 INTEGRATION TEST SKIPPED: MMRec's MMGCN, GRCN, DualGNN and DRAGON need "
                    "torch_geometric in the interpreter that runs MMRec (pip install torch_geometric)")
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("TABLE-2 INTEGRATION TEST SKIPPED: MMRec's SLMRec imports scikit-learn; install it into the "
                    "interpreter that runs MMRec (bash scripts/setup.sh, or pip install 'scikit-learn<1.8')")
    assert tuple(paper_name(m) for m in MODELS) == PAPER_ROWS
    clone = runnable_clone
    monkeypatch.chdir(clone.parent)
    monkeypatch.delenv("MMREC_REARM_CACHE_DIR", raising=False)  # graph caches then live in the demo folder
    before = porcelain(clone)
    assert cli.main(["install", clone.name]) == 0
    qs.place_demo_dataset(clone, "rearm_demo", USERS, ITEMS, 0, report=None)
    pins = first_grid_point(clone / "src", MODELS, "rearm_demo")
    shuffled = list(MODELS[::-1])  # the table must not follow the command line
    status = cli.main(["compare", "--mmrec", clone.name, "-d", "rearm_demo", "-m", *shuffled, "--seeds", "1",
                       "--epochs", "1", "--jobs", "2", "--timeout", "900", "--set", *pins])
    records = [json.loads(line) for line in (clone.parent / "results/rearm_demo/runs.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["status"]) for r in records) == sorted((m, "ok") for m in MODELS), \
        [(r["model"], r.get("message") or r.get("error")) for r in records if r["status"] != "ok"]
    assert status == 0
    for record in records:
        assert record["epochs_run"] == 1, record
        losses = [entry["loss"] for entry in record["history"]]
        assert len(losses) == 1 and all(v is not None and math.isfinite(v) for v in losses), (record["model"], losses)
        for split in ("valid", "test"):
            assert set(record[split]) >= METRIC_KEYS, (record["model"], record[split])
            assert all(0.0 <= record[split][k] <= 1.0 for k in METRIC_KEYS), (record["model"], split, record[split])
    fixed = {r["model"] for r in records if r.get("host_fixes")}
    expected = {"DRAGON", "DualGNN"}  # CPU-registered parameters (experiments/runner_fixes.py)
    if not torch.cuda.is_available():
        expected |= {"LATTICE", "GRCN", "MGCN"}  # unconditional .cuda()
    if importlib.util.find_spec("torch_scatter") is None:
        expected |= {"SLMRec", "MGCN"}  # torch_scatter served by torch_geometric
    assert fixed == expected, [(r["model"], r.get("host_fixes")) for r in records]
    rows = (clone.parent / "results/rearm_demo/table2.md").read_text().split("\n\n")
    table = next(block for block in rows if block.startswith("| Model |")).splitlines()[2:]
    names = [row.split(" | ")[0].lstrip("| ") for row in table]
    # one epoch of one: every best epoch is at the cap, so every row carries the cap mark
    assert names == [f"{name} {CAPPED}" for name in PAPER_ROWS], names

    inst.uninstall(clone, report=None)
    assert porcelain(clone) == before
