"""The run process's in-memory host fixes for MMRec models on a CPU-only host
(mmrec_rearm.experiments.runner_fixes): which models get which fix, and that a fix computes what the
missing GPU / package would."""
from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")

from mmrec_rearm.experiments import runner_fixes  # noqa: E402


def test_cuda_identity_only_for_the_models_that_call_cuda_and_only_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "cuda", torch.Tensor.cuda)  # restored after the test
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runner_fixes.cuda_identity("LATTICE") == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runner_fixes.cuda_identity("LightGCN") == []
    applied = runner_fixes.cuda_identity("GRCN")
    assert len(applied) == 1 and applied[0].startswith("GRCN: Tensor.cuda()")
    x = torch.ones(2)
    assert x.cuda() is x


def test_a_model_without_fixes_does_not_import_torch_in_the_run_process():
    """The import fixes run before MMRec in every run; for a model that needs none they import
    nothing heavy (torch costs seconds a run: a fake-MMRec test run went from 2.4 s to 0.13 s)."""
    import subprocess

    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('fixes', {str(runner_fixes.__file__)!r})\n"
            "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
            "assert module.apply_import_fixes('LightGCN') == []\n"
            "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr


def test_torch_scatter_stand_in_computes_scatter_add_and_mean(monkeypatch):
    pytest.importorskip("torch_geometric")
    real = sys.modules.pop("torch_scatter", None)
    monkeypatch.setattr(runner_fixes.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch_scatter" else object())
    try:
        assert runner_fixes.torch_scatter_from_pyg("LightGCN") == []
        applied = runner_fixes.torch_scatter_from_pyg("MGCN")
        assert len(applied) == 1 and "torch_geometric.utils.scatter" in applied[0]
        from torch_scatter import scatter, scatter_add, scatter_mean  # what SLMRec and MMRec's utils import

        src, index = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 2, 2])
        assert torch.equal(scatter_add(src, index, dim=0, dim_size=4), torch.tensor([3.0, 0.0, 7.0, 0.0]))
        assert torch.equal(scatter_mean(src, index), torch.tensor([1.5, 0.0, 3.5]))
        rows = torch.arange(6.0).view(3, 2)
        assert torch.equal(scatter(rows, torch.tensor([1, 0, 1]), dim=0, reduce="sum"),
                           torch.tensor([[2.0, 3.0], [4.0, 6.0]]))
        assert runner_fixes.torch_scatter_from_pyg("SLMRec") == []  # already provided
    finally:
        sys.modules.pop("torch_scatter", None)
        if real is not None:
            sys.modules["torch_scatter"] = real


def test_host_fixes_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(runner_fixes.HOST_FIXES_ENV, "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runner_fixes.apply_import_fixes("LATTICE") == []
