"""ApeGNN, MGDN and MIGGT trained and evaluated by the real MMRec (its own quick_start, Trainer and
evaluator) through our installer and ``mmrec-rearm compare``, on the seeded demo dataset.

Same requirements and skips as tests/test_integration_mmrec.py (a git checkout of MMRec, never
touched: the test works on a temporary clone; an interpreter with MMRec's pins). One clone, one
``compare`` call, 2 epochs per model, each model's search grid pinned to its default point.
Checked per model: the run finished, MMRec logged a finite loss for each epoch, valid and test
metrics lie in [0, 1], table2.md names MIGGT by its paper row "MIG-GT"; uninstall restores the
clone's ``git status``.
"""
from __future__ import annotations

import json
import math

from mmrec_rearm import cli
from mmrec_rearm import install as inst

from test_integration_mmrec import DEMO_USERS, DEMO_ITEMS, METRIC_KEYS, porcelain, runnable_clone  # noqa: F401

EPOCHS = 2
MODELS = ("ApeGNN", "MGDN", "MIGGT")
PINS = ("ApeGNN.kernel=heat", "ApeGNN.n_layers=2", "ApeGNN.reg_weight=1e-3",
        "MGDN.x_drop_rate=0.3", "MGDN.edge_drop_rate=0.5", "MGDN.z_drop_rate=0.1")


def test_the_baselines_train_through_mmrec_with_compare(runnable_clone, monkeypatch):
    clone = runnable_clone
    monkeypatch.chdir(clone.parent)
    before = porcelain(clone)
    assert cli.main(["install", clone.name]) == 0
    for model in MODELS:
        assert (clone / "src" / "models" / f"{model.lower()}.py").is_file()
        assert (clone / "src" / "configs" / "model" / f"{model}.yaml").is_file()
    inst._place_demo_dataset(clone, "rearm_demo", DEMO_USERS, DEMO_ITEMS, 0, report=None)
    status = cli.main(["compare", "--mmrec", clone.name, "-d", "rearm_demo", "-m", *MODELS, "--seeds", "1",
                       "--epochs", str(EPOCHS), "--set", *PINS])
    records = [json.loads(line) for line in (clone.parent / "results/rearm_demo/runs.jsonl").read_text().splitlines()]
    assert [(r["model"], r["status"]) for r in records] == [(m, "ok") for m in MODELS], \
        [r.get("message") or r.get("error") for r in records]
    assert status == 0
    for record in records:
        assert record["epochs_run"] == EPOCHS, record
        losses = [entry["loss"] for entry in record["history"]]
        assert len(losses) == EPOCHS and all(v is not None and math.isfinite(v) for v in losses), (record["model"], losses)
        for split in ("valid", "test"):
            assert set(record[split]) >= METRIC_KEYS, record[split]
            assert all(0.0 <= record[split][k] <= 1.0 for k in METRIC_KEYS), (record["model"], split, record[split])
    table = (clone.parent / "results/rearm_demo/table2.md").read_text()
    assert "| MIG-GT |" in table and "| ApeGNN |" in table and "| MGDN |" in table

    inst.uninstall(clone, report=None)
    assert porcelain(clone) == before
