"""bench/train.py's GPU report and device helper on made-up measurements: the report a GPU run
writes must not fail after minutes of device time, and its ratios must be the ones the rows say."""
import argparse
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.append(str(BENCH))  # train.py imports its sibling modules by name
import train  # noqa: E402
import train_report  # noqa: E402


def side(epoch_parts, eval_s, peak_gpu, **extra):
    return dict(eval_valid_s=eval_s / 2, eval_test_s=eval_s / 2, eval_predict_s=eval_s / 4, peak_rss_mb=4096.0,
                peak_gpu_mb=peak_gpu, peak_gpu_train_eval_mb=peak_gpu / 2,
                gpu_mb_by_stage={"after model construction": peak_gpu / 4, "after evaluation": peak_gpu / 2},
                model_init_s=3.0, **extra)


def measured() -> dict:
    batch = {"data": 0.0, "forward": 0.2, "backward": 0.3, "optimiser": 0.1, "loss": 1.0, "terms": [1, 0, 0, 0]}
    official = side(None, 4.0, 8192.0, batches=[batch, batch, batch], batches_per_epoch=10, load_dataset_s=90.0)
    ours = side(None, 1.0, 2048.0, epoch_s=2.0, timed_batches=10, batches_per_epoch=10,
                epoch_parts_s={"data": 0.0, "forward": 1.0, "backward": 0.8, "optimiser": 0.2},
                eval_official_protocol_s=0.8)
    data = {"n_users": 100, "n_items": 50, "rows": {"train": 800, "valid": 100, "test": 100}, "image_dim": 4096,
            "text_dim": 384, "features": "random"}
    return {"baby": {"data": data, "official": official, "ours": ours, "ours_warm": None, "total_s": 60.0}}


def test_gpu_report_rows_and_ratios():
    args = argparse.Namespace(batches=2, our_batches=0, no_warm=True)
    info = {"gpu": "Test GPU", "gpu_memory": "80 GiB", "cuda": "13.0", "cpu": "cpu", "cores": 16, "torch": "2.x",
            "numpy": "2", "scipy": "1", "python": "3.12"}
    text = train_report.gpu_report(args, info, measured(), 120.0)
    assert "## baby" in text and "Test GPU" in text
    # official epoch = 10 batches x (0.2 + 0.3 + 0.1) s = 6 s; ours 2 s -> 0.333x, met
    assert "| **training epoch** | 6.00 s | 2.00 s | 0.333× | ≤ 0.5× | **yes** |" in text
    # peak GPU memory 8 GB vs 2 GB -> 0.25x, met
    assert "| **peak GPU memory**, whole run (`max_memory_allocated`) | 8.00 GB | 2.00 GB | 0.250× | ≤ 0.5× | **yes** |" in text
    assert "| evaluation, valid + test | 4.00 s | 1.00 s | 0.250× |  |  |" in text


def test_device_helper_on_the_cpu_is_a_no_op():
    device = train.Device("cpu")
    device.stage("anything")
    device.start_training_window()
    result = {}
    device.record(result)
    assert result == {} and device.peak_mb() == 0.0 and device.now() > 0
