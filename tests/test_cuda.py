"""REARM on a CUDA GPU: the same numbers as on the CPU, MMRec's quick_start on CUDA, and a checkpoint
saved on CUDA that loads on a CPU-only machine.

Every test here carries the ``cuda`` marker (``pytest -m cuda`` runs just these; setup.cfg registers
it) and is skipped, with the reason, where torch sees no CUDA device. ``scripts/gpu-check.sh`` runs
them together with the GPU benchmark (docs/testing.md). The device-generic code they exercise also
runs on the CPU in the default suite (tests/test_layers.py, tests/test_model.py, tests/test_exact_values.py).
"""
from __future__ import annotations

import io
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import locate_mmrec_checkout, mmrec_runtime_problem  # noqa: E402
from mmrec_rearm import install as inst  # noqa: E402
from mmrec_rearm import synth  # noqa: E402
from mmrec_rearm.experiments.checkpoints import read_splits  # noqa: E402
from mmrec_rearm.experiments.recommend import rank_items, recommend  # noqa: E402
from mmrec_rearm.experiments.runner_checkpoint import checkpoint_payload, save_checkpoint  # noqa: E402
from mmrec_rearm.host import ArrayDataLoader  # noqa: E402
from mmrec_rearm.model.rearm import REARM  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="CUDA TESTS SKIPPED: torch sees no CUDA device (torch "
                              f"{torch.__version__}, built with CUDA {torch.version.cuda}); run "
                              "`pytest -m cuda` (or scripts/gpu-check.sh) on a machine with an NVIDIA GPU"),
]

SMALL = dict(embedding_size=16, rank=2, n_layers=2, user_knn_k=10, item_knn_k=5, rearm_cache_dir=False)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    """The seeded demo dataset in MMRec's layout (.inter + image/text features)."""
    return synth.make_demo_dataset(tmp_path_factory.mktemp("cuda_demo"), name="rearm_demo", n_users=300,
                                   n_items=200, seed=0)


def build(folder: Path, device: str, **overrides) -> REARM:
    splits = read_splits(folder)
    coo = splits.train.tocoo()
    config = dict(dataset=folder.name, data_path=f"{folder.parent}/", device=device,
                  vision_feature_file="image_feat.npy", text_feature_file="text_feat.npy", **SMALL)
    config.update(overrides)
    torch.manual_seed(0)
    return REARM(config, ArrayDataLoader(coo.row, coo.col, splits.n_users, splits.n_items))


def batch(folder: Path, device: str, size: int = 512, seed: int = 0) -> torch.Tensor:
    splits = read_splits(folder)
    coo = splits.train.tocoo()
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, coo.nnz, size)
    return torch.tensor(np.stack([coo.row[rows], coo.col[rows], rng.integers(0, splits.n_items, size)]),
                        device=device)


def test_cpu_and_cuda_agree_on_forward_losses_and_gradients(demo_folder):
    """Attention dropout 0 on both sides: the dropout draws of two devices cannot be the same."""
    no_dropout = dict(self_attn_dropout=0.0, cross_attn_dropout=0.0, cl_loss_weight=0.5, ort_loss_weight=2.0)
    cpu = build(demo_folder, "cpu", **no_dropout)
    gpu = build(demo_folder, "cuda", **no_dropout)
    gpu.load_state_dict(cpu.state_dict())
    assert all(b.is_cuda for b in gpu.buffers()) and all(p.is_cuda for p in gpu.parameters())
    assert gpu.user_graph.device.type == "cuda"  # the graphs are model state, moved with it

    cpu_users, cpu_items = cpu.eval()()
    gpu_users, gpu_items = gpu.eval()()
    torch.testing.assert_close(gpu_users.cpu(), cpu_users, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpu_items.cpu(), cpu_items, rtol=1e-4, atol=1e-5)

    cpu.train(), gpu.train()
    cpu_terms = cpu.calculate_loss(batch(demo_folder, "cpu"))
    gpu_terms = gpu.calculate_loss(batch(demo_folder, "cuda"))
    for a, b in zip(cpu_terms, gpu_terms):
        assert math.isclose(float(a.detach()), float(b.detach().cpu()), rel_tol=1e-4, abs_tol=1e-6)
    sum(cpu_terms).backward()
    sum(gpu_terms).backward()
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        if p.grad is None:
            assert q.grad is None, name
            continue
        scale = float(p.grad.abs().max())
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-3, atol=1e-4 * max(scale, 1e-3), msg=name)


def test_a_cuda_training_step_copies_nothing_from_the_host(demo_folder):
    """Forward, loss and backward of a batch already on the GPU start no host-to-device copy (the
    graphs, raw features and constants live on the device)."""
    from torch.profiler import ProfilerActivity, profile

    model = build(demo_folder, "cuda").train()
    interaction = batch(demo_folder, "cuda")
    sum(model.calculate_loss(interaction)).backward()  # warm-up: lazy initialisations
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        model.zero_grad()
        sum(model.calculate_loss(interaction)).backward()
        torch.cuda.synchronize()
    copies = [e.name for e in prof.events() if "HtoD" in e.name or "Memcpy H" in e.name]
    assert not copies, copies[:10]


@pytest.fixture
def mmrec_copy(tmp_path) -> Path:
    """A throw-away copy of the MMRec checkout (no git needed: GPU images may lack it)."""
    source, why = locate_mmrec_checkout()
    if source is None:
        pytest.skip(f"CUDA QUICK_START SKIPPED: {why}")
    copy = tmp_path / "MMRec"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns(".git"))
    return copy


def test_two_epochs_through_mmrec_quick_start_on_cuda(mmrec_copy, monkeypatch):
    problem = mmrec_runtime_problem()
    if problem:
        pytest.skip(f"CUDA QUICK_START SKIPPED: {sys.executable} cannot run MMRec ({problem})")
    monkeypatch.delenv("MMREC_REARM_CACHE_DIR", raising=False)
    out = io.StringIO()
    result = inst.quickstart(mmrec_copy, epochs=2, model="REARM", n_users=300, n_items=200,
                             config={"use_gpu": True, "gpu_id": 0}, stream=out, report=None, timeout=300)
    text = out.getvalue()
    assert "device=cuda" in text, text[-3000:]  # MMRec logs its configuration, device included
    assert "Loss is nan" not in text
    losses = re.findall(r"train_loss1: (\S+?),", text)
    assert len(losses) == 2 and all(math.isfinite(float(x)) for x in losses), text[-3000:]
    assert all(0.0 <= v <= 1.0 for v in [*result.valid.values(), *result.test.values()])
    assert result.valid["recall@20"] >= 0.0


def test_checkpoint_saved_on_cuda_loads_on_cpu_with_the_same_top_k(demo_folder, tmp_path):
    model = build(demo_folder, "cuda").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(3):
        optimizer.zero_grad()
        sum(model.calculate_loss(batch(demo_folder, "cuda", seed=step))).backward()
        optimizer.step()
    model.eval()
    splits = read_splits(demo_folder)
    users = np.arange(0, splits.n_users, 7)
    with torch.no_grad():
        gpu_scores = model.full_sort_predict((torch.as_tensor(users, device="cuda"),)).cpu().numpy()
    expected = rank_items(gpu_scores, users, splits.train, 10)

    config = dict(dataset=demo_folder.name, data_path=f"{demo_folder.parent}/", model="REARM", device="cuda",
                  vision_feature_file="image_feat.npy", text_feature_file="text_feat.npy", **SMALL)
    path = tmp_path / "cuda.pt"
    save_checkpoint(str(path), checkpoint_payload(model, config, epoch=0, valid={}, test={}))
    got = recommend(path, users.tolist(), top_k=10)  # rebuilt on the CPU, torch.load(weights_only)
    assert [(u, r) for u, r, _, _ in got] == [(u, r) for u, r, _, _ in expected]
    row = {int(u): n for n, u in enumerate(users)}
    swapped = 0
    for (user, rank, item, score), (_, _, gpu_item, gpu_score) in zip(got, expected):
        tolerance = 1e-4 * max(1.0, abs(gpu_score))
        assert abs(score - gpu_score) <= tolerance, (user, rank)  # the same score at every rank
        if item != gpu_item:  # only items whose CUDA scores tie within float32 rounding may swap
            assert abs(gpu_scores[row[user], item] - gpu_score) <= tolerance, (user, rank, item, gpu_item)
            swapped += 1
    assert swapped <= len(got) // 20
