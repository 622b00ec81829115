"""MICRO and DiffMM trained and evaluated by the real MMRec toolbox (its quick_start, Trainer and
evaluator, unchanged) on the seeded demo dataset, 2 epochs each, in a temporary clone.

Same setting and skip rules as tests/test_integration_mmrec.py (whose helpers are reused): the
shims come from our installer, the runs are MMRec subprocesses with cwd ``<clone>/src``, and the
clone's ``git status`` after uninstall equals the one before install.
"""
from __future__ import annotations

import io
import math
import re

import pytest

from mmrec_rearm import install as inst

from test_integration_mmrec import (  # noqa: F401 - runnable_clone is a fixture
    _EVAL_LINE, _LOSS_LINE, _LOSS_TERM, DEMO_ITEMS, DEMO_USERS, EPOCHS, METRIC_KEYS, metric_blocks, porcelain,
    runnable_clone)


def test_micro_and_diffmm_train_and_evaluate_through_mmrec(runnable_clone, monkeypatch):
    clone = runnable_clone
    monkeypatch.delenv("MMREC_REARM_CACHE_DIR", raising=False)  # MICRO's graph cache then lives in the demo folder
    before = porcelain(clone)
    installed = inst.install(clone, report=None)
    for shim in ("micro.py", "diffmm.py"):
        assert clone / "src" / "models" / shim in installed
    for model, marker in (("MICRO", r"MICRO item kNN graphs \(.*\) (built|read from the cache)"),
                          ("DiffMM", r"DiffMM diffusion: loss per modality")):
        out = io.StringIO()
        result = inst.quickstart(clone, epochs=EPOCHS, model=model, n_users=DEMO_USERS, n_items=DEMO_ITEMS,
                                 config={"use_gpu": False}, stream=out, report=None, timeout=600)
        text = out.getvalue()
        assert "Loss is nan" not in text
        assert text.count("=========1/1: Parameters:") == 1, model  # the grid cut to one point
        assert re.search(marker, text), model
        loss_lines = _LOSS_LINE.findall(text)
        assert len(loss_lines) == EPOCHS, text[-3000:]
        for line in loss_lines:
            terms = [float(v) for _, v in _LOSS_TERM.findall(line)]
            assert len(terms) == 3 and all(math.isfinite(v) for v in terms), (model, line)
            assert terms[0] > 0  # BPR
        assert [int(e) for e, _ in _EVAL_LINE.findall(text)] == list(range(EPOCHS))
        for label in ("valid", "test"):
            blocks = metric_blocks(text, label)
            assert len(blocks) == EPOCHS
            for block in blocks:
                assert set(block) == METRIC_KEYS and all(0.0 <= v <= 1.0 for v in block.values()), block
        assert all(0.0 <= v <= 1.0 for v in [*result.valid.values(), *result.test.values()])
        assert result.test["recall@50"] > 0, model
    removed = inst.uninstall(clone, report=None)
    assert clone.resolve() / "src/models/diffmm.py" in removed
    assert porcelain(clone) == before
