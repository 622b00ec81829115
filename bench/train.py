"""Training and evaluation cost of REARM inside MMRec against the official REARM code.

One command measures both implementations on the same data, hyper-parameters and machine and
writes a markdown report::

    python bench/train.py --dataset baby [--batches 5] [--out bench/results/train.md]

What happens:

1. A temporary work folder receives the dataset twice: as an MMRec dataset folder inside a
   throw-away ``git clone`` of the MMRec checkout (``$MMREC_SRC`` or ``~/MMRec``; never the checkout
   itself) into which ``mmrec_rearm.install.install`` wrote our shim and YAML files, and in the
   official layout (``data/<name>/{train,valid,test}.npy``, each ``(2, n)`` int64 rows [user; item],
   ids contiguous from 0). Both sides get the *same* seeded random float32 item features
   (4096-d image, 384-d text; timing only, never quality).
2. The official code (``$REARM_OFFICIAL_SRC`` or ``~/REARM-official``, a clone of
   MrShouxingMa/REARM with the Python 3.11 fix of docs/testing.md) runs in its own process with the
   official per-dataset settings: dataset + graph construction (``Load_dataset``), the two
   evaluation loaders, model construction, AdamW. Then one warm-up batch and ``--batches`` timed
   training batches drawn by its own ``DataLoader`` (forward + loss, backward and optimiser step
   timed separately); the epoch time is *extrapolated* as (batches per epoch) x (mean time of the
   timed batches). Then one full evaluation (valid + test) with the official ``evaluate_model``.
3. Ours runs in its own process through MMRec's own objects (``Config``, ``RecDataset``,
   ``TrainDataLoader``, ``EvalDataLoader``, ``get_model``, ``Trainer``): model construction with a
   fresh graph cache (graphs built, timed separately), one *real* full epoch through
   ``Trainer._train_epoch`` (forward and optimiser step timed by wrappers, the rest is backward and
   trainer bookkeeping), then ``Trainer.evaluate`` on valid and on test. A third, small process
   constructs the model again against the now warm cache (the cost of every later run).
4. Peak RSS is ``ru_maxrss`` of each measuring process (its own; children such as DataLoader
   workers are reported apart).

``python bench/train.py --profile 2`` instead profiles ours only: RSS after each stage of two
plain training batches and the highest RSS sampled within each stage, the split of one valid
evaluation between ``full_sort_predict`` and MMRec's own loop, and a torch.profiler table over two
more batches (operators by self CPU time).

Targets (issue 3): ours <= 0.5x the official epoch, <= 0.3x its valid+test evaluation and
<= 0.5x its peak memory, with our faithful defaults. See bench/results/train.md.

On a GPU::

    python bench/train.py --device cuda --dataset baby tiktok --no-warm --out bench/results/train-gpu.md

runs both sides on the GPU (the official code with its own device switch, ours through MMRec's
``use_gpu``), one dataset after the other, and reports per dataset the epoch, the valid + test
evaluation and the peak GPU memory (``torch.cuda.max_memory_allocated`` of each measuring process,
over the whole run and over training + evaluation alone); timers synchronise the device. Targets:
epoch and peak GPU memory <= 0.5x the official. Baby gets random features; TikTok its real 128-d
image and audio features (the Baby settings on both sides: neither the official README nor our
presets have TikTok settings, and our default for it is the Baby preset).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from train_report import git_head, gpu_report, machine_info, report
from train_settings import (FEATURE_SEED, IMAGE_DIM, OFFICIAL_COMMON, OFFICIAL_SETTINGS, OUR_CONFIG_KEYS,
                            REAL_FEATURES, TEXT_DIM)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = {"cpu": REPO / "bench" / "results" / "train.md", "cuda": REPO / "bench" / "results" / "train-gpu.md"}


def now() -> float:
    return time.perf_counter()


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def say(msg: str) -> None:
    print(msg, flush=True)


class Device:
    """The measuring process's device: synchronised timing and peak GPU memory (none on the CPU)."""

    def __init__(self, name: str):
        import torch

        self.torch = torch
        self.name = name
        self.cuda = name == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")
        self.peaks: Dict[str, float] = {}
        self._before_reset = 0.0

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def now(self) -> float:
        """perf_counter after the device has finished the work queued so far."""
        self.sync()
        return now()

    def peak_mb(self) -> float:
        """Highest GPU memory allocated by torch in this process so far, MB (0 on the CPU)."""
        if not self.cuda:
            return 0.0
        return max(self._before_reset, self.torch.cuda.max_memory_allocated() / 2 ** 20)

    def stage(self, name: str) -> None:
        if self.cuda:
            self.peaks[name] = self.torch.cuda.max_memory_allocated() / 2 ** 20

    def start_training_window(self) -> None:
        """From here on, max_memory_allocated covers training + evaluation only."""
        if self.cuda:
            self._before_reset = self.peak_mb()
            self.torch.cuda.reset_peak_memory_stats()

    def record(self, res: dict) -> None:
        if self.cuda:
            res["gpu"] = self.torch.cuda.get_device_name()
            res["peak_gpu_mb"] = self.peak_mb()
            res["peak_gpu_train_eval_mb"] = self.torch.cuda.max_memory_allocated() / 2 ** 20
            res["gpu_mb_by_stage"] = dict(self.peaks)


# =============================================================================================
# Data preparation (parent process)


def read_inter(path: Path) -> np.ndarray:
    """(n, 3) int64 [user, item, x_label] of an MMRec .inter file (header required)."""
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", usecols=["userID", "itemID", "x_label"])
    return frame[["userID", "itemID", "x_label"]].to_numpy(dtype=np.int64)


def prepare(dataset: str, data_dir: Path, work: Path, mmrec_src: Path) -> dict:
    """Write the dataset for both sides; return its statistics and where things are."""
    from mmrec_rearm import install as inst

    t0 = now()
    table = read_inter(data_dir / f"{dataset}.inter")
    users, items, labels = table[:, 0], table[:, 1], table[:, 2]
    user_ids, users = np.unique(users, return_inverse=True)
    item_ids, items = np.unique(items, return_inverse=True)
    reindexed = not (user_ids[-1] + 1 == len(user_ids) and item_ids[-1] + 1 == len(item_ids))
    n_users, n_items = len(user_ids), len(item_ids)
    real = REAL_FEATURES.get(dataset)
    if real:  # the dataset's own files (first -> vision slot, second -> text slot), rows of the kept items
        image, text = (np.load(data_dir / name).astype(np.float32)[item_ids] for name in real)
    else:
        rng = np.random.default_rng(FEATURE_SEED)
        image = rng.random((n_items, IMAGE_DIM), dtype=np.float32)
        text = rng.random((n_items, TEXT_DIM), dtype=np.float32)
    mm_names = real or ("image_feat.npy", "text_feat.npy")

    # MMRec side: a temporary clone with our files installed and the dataset in its data folder.
    clone = work / "MMRec"
    if shutil.which("git"):
        subprocess.run(["git", "clone", "-q", str(mmrec_src), str(clone)], check=True)
    else:  # a bare machine without git: a plain copy serves the same purpose here
        shutil.copytree(mmrec_src, clone, ignore=shutil.ignore_patterns(".git"))
    inst.install(clone, report=None)
    mm_folder = clone / "data" / dataset
    mm_folder.mkdir(parents=True, exist_ok=True)
    if reindexed:
        import pandas as pd

        pd.DataFrame({"userID": users, "itemID": items, "rating": 1, "timestamp": 0,
                      "x_label": labels}).to_csv(mm_folder / f"{dataset}.inter", sep="\t", index=False)
    else:
        shutil.copyfile(data_dir / f"{dataset}.inter", mm_folder / f"{dataset}.inter")
    np.save(mm_folder / mm_names[0], image)
    np.save(mm_folder / mm_names[1], text)
    if not (clone / "src" / "configs" / "dataset" / f"{dataset}.yaml").is_file():
        raise SystemExit(f"{clone}/src/configs/dataset/{dataset}.yaml missing: MMRec has no dataset "
                         f"config for {dataset!r}, and mmrec-rearm does not ship one")

    # Official side: ./data/<name>/{train,valid,test}.npy + the same feature files.
    off_root = work / "official"
    off_folder = off_root / "data" / dataset
    off_folder.mkdir(parents=True)
    counts = {}
    for code, split in enumerate(("train", "valid", "test")):
        keep = labels == code
        np.save(off_folder / f"{split}.npy", np.vstack((users[keep], items[keep])).astype(np.int64))
        counts[split] = int(keep.sum())
    for ours_name, official_name in zip(mm_names, ("image_feat.npy", "text_feat.npy")):
        os.symlink(mm_folder / ours_name, off_folder / official_name)
    return {"dataset": dataset, "source": str(data_dir / f"{dataset}.inter"), "n_users": n_users,
            "n_items": n_items, "rows": counts, "reindexed": reindexed, "image_dim": int(image.shape[1]),
            "text_dim": int(text.shape[1]), "feature_seed": None if real else FEATURE_SEED,
            "features": ("real: " + ", ".join(real)) if real else "random", "clone": str(clone),
            "official_root": str(off_root), "seconds": now() - t0}


# =============================================================================================
# Worker: the official code (runs with cwd = <work>/official)


def official_config(dataset: str, device: str = "cpu"):
    import torch

    s = dict(OFFICIAL_COMMON, **OFFICIAL_SETTINGS[dataset])
    cpu = os.cpu_count() or 1
    return types.SimpleNamespace(
        device=torch.device(device), dataset=dataset, num_user_co=s["user_knn_k"],
        num_item_co=s["item_knn_k"], num_workers=min(cpu // 2, 8), writer=False, **s)


def run_official(args) -> dict:
    import warnings

    import torch

    import scipy.sparse as sp

    if not hasattr(sp.dok_matrix, "_update"):
        raise SystemExit("the official get_norm_adj_mat needs scipy.sparse.dok_matrix._update (scipy < 1.12); "
                         "with a newer scipy put scripts/mmrec_compat on PYTHONPATH (docs/testing.md)")
    official = Path(args.official_src)
    sys.path.insert(0, str(official))
    from utils import data_loader, helper  # noqa: E402  (official modules)
    from utils.evaluator import evaluate_model  # noqa: E402
    import model as official_model  # noqa: E402

    warnings.simplefilter("ignore")  # torch.sparse.FloatTensor deprecation warnings
    config = official_config(args.dataset, args.device)
    device = Device(args.device)
    helper.init_seed(config.seed)
    res: dict = {"threads": torch.get_num_threads(), "num_workers": config.num_workers, "device": args.device,
                 "settings": {k: v for k, v in vars(config).items() if k != "device"}}
    rss: Dict[str, float] = {}

    t = now()
    dataset = data_loader.Load_dataset(config)
    res["load_dataset_s"] = device.now() - t
    rss["after Load_dataset (graphs)"] = peak_rss_mb()
    device.stage("after Load_dataset (graphs)")
    say(f"official: Load_dataset {res['load_dataset_s']:.1f}s, peak {rss['after Load_dataset (graphs)']:.0f} MB")
    t = now()
    valid_rows, test_rows = dataset.load_eval_data()
    valid_data = data_loader.Load_eval_dataset("Validation", config, valid_rows)
    test_data = data_loader.Load_eval_dataset("Testing", config, test_rows)
    res["eval_loaders_s"] = now() - t
    t = now()
    net = official_model.REARM(config, dataset).to(config.device)
    res["model_init_s"] = device.now() - t
    optimizer = torch.optim.AdamW(net.parameters(), config.learning_rate, weight_decay=config.reg_weight)
    res["parameters"] = int(sum(p.numel() for p in net.parameters()))
    rss["after model construction"] = peak_rss_mb()
    device.stage("after model construction")
    device.start_training_window()
    say(f"official: eval loaders {res['eval_loaders_s']:.1f}s, model {res['model_init_s']:.1f}s, "
        f"{res['parameters']:,} parameters")

    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=True,
                                         num_workers=config.num_workers)
    res["batches_per_epoch"] = len(loader)
    res["train_rows"] = len(dataset)
    net.train()
    rows: List[dict] = []
    batches = iter(loader)
    for index in range(args.batches + 1):  # batch 0 is the warm-up
        t = now()
        users, items = next(batches)
        t_data = now() - t
        t = device.now()
        optimizer.zero_grad()
        total, bpr, reg, cl, diff = net.loss(users, items)
        if torch.isnan(total):
            raise SystemExit(f"official loss is NaN at batch {index} (users without training items get a NaN "
                             "interest in the official code: apply fix 5 of docs/testing.md, as scripts/gpu-pack.sh does)")
        t_fwd = device.now() - t
        t = now()
        total.backward()
        t_bwd = device.now() - t
        t = now()
        optimizer.step()
        t_opt = device.now() - t
        rows.append({"data": t_data, "forward": t_fwd, "backward": t_bwd, "optimiser": t_opt,
                     "loss": float(total), "terms": [float(bpr), float(reg), float(cl), float(diff)]})
        say(f"official: batch {index}{' (warm-up)' if index == 0 else ''}: data {t_data:.2f}s "
            f"forward {t_fwd:.2f}s backward {t_bwd:.2f}s optimiser {t_opt:.2f}s loss {float(total):.4f}")
    del batches  # stop the DataLoader worker
    res["batches"] = rows
    rss["after training batches"] = peak_rss_mb()
    device.stage("after training batches")

    harness = types.SimpleNamespace(model=net, topk=config.topk, metrics=config.metrics,
                                    valid_metric=config.valid_metric, writer=None)
    predict_s = _time_calls(net, "full_sort_predict")
    t = device.now()
    _, valid_result = evaluate_model(harness, 0, valid_data, t_or_v="valid")
    res["eval_valid_s"] = device.now() - t
    t = now()
    _, test_result = evaluate_model(harness, 0, test_data, t_or_v="test")
    res["eval_test_s"] = device.now() - t
    res["eval_predict_s"] = predict_s["seconds"]
    res["valid_result"], res["test_result"] = valid_result, test_result
    rss["after evaluation"] = peak_rss_mb()
    device.stage("after evaluation")
    device.record(res)
    say(f"official: evaluation valid {res['eval_valid_s']:.2f}s test {res['eval_test_s']:.2f}s")
    res["rss_mb"] = rss
    res["peak_rss_mb"] = peak_rss_mb()
    res["children_peak_rss_mb"] = peak_rss_mb(resource.RUSAGE_CHILDREN)
    return res


# =============================================================================================
# Worker: ours through MMRec's own objects (runs with cwd = <clone>/src)


def _mmrec_setup(args, extra: Optional[dict] = None):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not hasattr(np, "float"):
            raise SystemExit("MMRec's evaluator needs np.float (numpy < 1.24); with a newer numpy put "
                             "scripts/mmrec_compat on PYTHONPATH (docs/testing.md)")
    sys.path.insert(0, os.getcwd())
    from utils.configurator import Config  # noqa: E402  (MMRec modules)
    from utils.dataloader import EvalDataLoader, TrainDataLoader  # noqa: E402
    from utils.dataset import RecDataset  # noqa: E402
    from utils.logger import init_logger  # noqa: E402
    from utils.utils import init_seed  # noqa: E402

    # A fresh graph cache chosen by the parent (MMREC_REARM_CACHE_DIR), also named in the config.
    cache = {"rearm_cache_dir": os.environ["MMREC_REARM_CACHE_DIR"]} if "MMREC_REARM_CACHE_DIR" in os.environ else {}
    config = Config("REARM", args.dataset, {"use_gpu": args.device == "cuda", "gpu_id": 0, "epochs": 1, **cache,
                                            **(extra or {})})
    if str(config["device"]) != args.device:
        raise SystemExit(f"MMRec chose device {config['device']}, not {args.device}")
    # The first point of any grid the YAML files declare, as quick_start's first run would use.
    for name in config["hyper_parameters"]:
        value = config[name]
        config[name] = value[0] if isinstance(value, list) and value else value
    init_logger(config)
    init_seed(config["seed"])
    t = now()
    dataset = RecDataset(config)
    str(dataset)
    train_ds, valid_ds, test_ds = dataset.split()
    for part in (train_ds, valid_ds, test_ds):
        str(part)  # sets inter_num, which the loaders read
    train_data = TrainDataLoader(config, train_ds, batch_size=config["train_batch_size"], shuffle=True)
    valid_data = EvalDataLoader(config, valid_ds, additional_dataset=train_ds,
                                batch_size=config["eval_batch_size"])
    test_data = EvalDataLoader(config, test_ds, additional_dataset=train_ds,
                               batch_size=config["eval_batch_size"])
    data_s = now() - t
    train_data.pretrain_setup()
    return config, train_data, valid_data, test_data, data_s


class _Captured(logging.Handler):
    """Keeps the messages our package logs (the model reports its graph build time)."""

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.lines: List[str] = []

    def emit(self, record) -> None:
        self.lines.append(record.getMessage())


def _capture_our_logs() -> _Captured:
    handler = _Captured()
    package_logger = logging.getLogger("mmrec_rearm")
    package_logger.addHandler(handler)
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    return handler


def _graph_time(lines: List[str]) -> Optional[dict]:
    """(seconds, hit) from the model's "REARM graphs built|read from the cache in X s" line."""
    import re

    for line in lines:
        found = re.search(r"REARM graphs (built|read from the cache) in ([\d.]+) s", line)
        if found:
            return {"seconds": float(found.group(2)), "hit": found.group(1) != "built"}
    return None


def run_ours(args) -> dict:
    import torch

    config, train_data, valid_data, test_data, data_s = _mmrec_setup(args)
    from utils.utils import get_model, get_trainer  # noqa: E402

    device = Device(args.device)
    res: dict = {"threads": torch.get_num_threads(), "data_loaders_s": data_s, "device": args.device,
                 "config": {k: _plain(config[k]) for k in OUR_CONFIG_KEYS if config[k] is not None},
                 "cache_dir": os.environ.get("MMREC_REARM_CACHE_DIR")}
    rss: Dict[str, float] = {"after MMRec data loaders": peak_rss_mb()}
    say(f"ours: MMRec dataset + loaders {data_s:.1f}s")
    captured = _capture_our_logs()
    t = now()
    model = get_model("REARM")(config, train_data).to(config["device"])
    res["model_init_s"] = device.now() - t
    res["graph"] = _graph_time(captured.lines)
    res["model_log"] = captured.lines[:40]
    res["parameters"] = int(sum(p.numel() for p in model.parameters()))
    res["trainable_parameters"] = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
    rss["after model construction"] = peak_rss_mb()
    device.stage("after model construction")
    device.start_training_window()
    say(f"ours: model construction incl. graph build (cold cache) {res['model_init_s']:.1f}s, "
        f"{res['parameters']:,} parameters ({res['trainable_parameters']:,} trainable)")
    trainer = get_trainer()(config, model)
    res["optimiser"] = type(trainer.optimizer).__name__

    timers = {"data": 0.0, "forward": 0.0, "optimiser": 0.0, "batches": 0}
    step = trainer.optimizer.step

    def timed_step(*a, **k):
        t0 = device.now()
        out = step(*a, **k)
        timers["optimiser"] += device.now() - t0
        return out

    def timed_loss(interaction):
        t0 = device.now()
        out = model.calculate_loss(interaction)
        timers["forward"] += device.now() - t0
        timers["batches"] += 1
        return out

    class TimedBatches:
        """Iterates the real TrainDataLoader, timing how long each batch takes to arrive."""

        def __iter__(self):
            source = iter(train_data)
            while True:
                t0 = now()
                try:
                    batch = next(source)
                except StopIteration:
                    return
                timers["data"] += now() - t0
                yield batch

    limit = args.our_batches
    if limit:
        def limited():
            for i, batch in enumerate(TimedBatches()):
                if i >= limit:
                    return
                yield batch
        batches = limited()
    else:
        batches = TimedBatches()
    trainer.optimizer.step = timed_step
    model.pre_epoch_processing()
    t = device.now()
    losses, _ = trainer._train_epoch(batches, 0, loss_func=timed_loss)
    epoch_s = device.now() - t
    trainer.optimizer.step = step
    if torch.is_tensor(losses):
        raise SystemExit("ours: loss is NaN during the epoch")
    res["batches_per_epoch"] = len(train_data)
    res["timed_batches"] = timers["batches"]
    res["epoch_measured_s"] = epoch_s
    res["epoch_s"] = epoch_s if not limit else epoch_s / timers["batches"] * len(train_data)
    res["epoch_parts_s"] = {"data": timers["data"], "forward": timers["forward"],
                            "optimiser": timers["optimiser"],
                            "backward": epoch_s - timers["data"] - timers["forward"] - timers["optimiser"]}
    res["loss_terms"] = [float(x) / max(timers["batches"], 1) for x in
                         (losses if isinstance(losses, tuple) else (losses,))]
    rss["after training epoch"] = peak_rss_mb()
    device.stage("after training epoch")
    say(f"ours: epoch {epoch_s:.1f}s over {timers['batches']} batches "
        f"(forward {timers['forward']:.1f}s, optimiser {timers['optimiser']:.1f}s, data {timers['data']:.1f}s)")
    trainer.lr_scheduler.step()
    model.post_epoch_processing()

    predict_s = _time_calls(model, "full_sort_predict")
    t = device.now()
    res["valid_result"] = trainer.evaluate(valid_data)
    res["eval_valid_s"] = device.now() - t
    t = now()
    res["test_result"] = trainer.evaluate(test_data)
    res["eval_test_s"] = device.now() - t
    res["eval_predict_s"] = predict_s["seconds"]
    rss["after evaluation"] = peak_rss_mb()
    device.stage("after evaluation")
    device.record(res)
    say(f"ours: evaluation valid {res['eval_valid_s']:.2f}s test {res['eval_test_s']:.2f}s "
        f"(in full_sort_predict {res['eval_predict_s']:.2f}s)")

    # Again under the official protocol (top-k 10/20; Precision, Recall, NDCG): MMRec's evaluator
    # costs per recommended position, and its default protocol ranks 50 per user.
    from utils.topk_evaluator import TopKEvaluator  # noqa: E402

    config["topk"], config["metrics"] = list(OFFICIAL_COMMON["topk"]), list(OFFICIAL_COMMON["metrics"])
    trainer.evaluator = TopKEvaluator(config)
    predict_s["seconds"] = 0.0
    t = device.now()
    trainer.evaluate(valid_data)
    trainer.evaluate(test_data)
    res["eval_official_protocol_s"] = device.now() - t
    res["eval_official_protocol_predict_s"] = predict_s["seconds"]
    say(f"ours: evaluation valid + test with the official top-k 10/20 protocol "
        f"{res['eval_official_protocol_s']:.2f}s (in full_sort_predict {predict_s['seconds']:.2f}s)")
    res["rss_mb"] = rss
    res["peak_rss_mb"] = peak_rss_mb()
    res["children_peak_rss_mb"] = peak_rss_mb(resource.RUSAGE_CHILDREN)
    return res


def _time_calls(obj, name: str) -> dict:
    """Wrap ``obj.<name>`` so that the seconds spent inside it add up in the returned dict."""
    inner = getattr(obj, name)
    spent = {"seconds": 0.0}

    def timed(*a, **k):
        t0 = now()
        out = inner(*a, **k)
        spent["seconds"] += now() - t0
        return out

    setattr(obj, name, timed)
    return spent


def run_ours_warm(args) -> dict:
    """Model construction again, against the cache the previous process filled."""
    config, train_data, _, _, data_s = _mmrec_setup(args)
    from utils.utils import get_model  # noqa: E402

    captured = _capture_our_logs()
    t = now()
    get_model("REARM")(config, train_data)
    res = {"model_init_s": now() - t, "data_loaders_s": data_s, "peak_rss_mb": peak_rss_mb(),
           "graph": _graph_time(captured.lines)}
    say(f"ours: model construction with a warm cache {res['model_init_s']:.1f}s")
    return res


def run_ours_profile(args) -> dict:
    """torch.profiler over ``--profile`` training batches and one evaluation batch of ours."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    config, train_data, valid_data, _, _ = _mmrec_setup(args)
    from utils.utils import get_model, get_trainer  # noqa: E402

    memory = [("after MMRec data loaders", *_rss_now())]
    model = get_model("REARM")(config, train_data).to(config["device"])
    trainer = get_trainer()(config, model)
    memory.append(("after model + trainer construction", *_rss_now()))
    model.train()
    batches = iter(train_data)
    sampler = _RssSampler()
    for index in range(2):  # warm-up outside the profile; memory stages of two plain batches
        batch = next(batches)
        trainer.optimizer.zero_grad()
        memory.append((f"batch {index}: after zero_grad", *_rss_now()))
        sampler.phase = f"batch {index}: forward + loss"
        loss = sum(_as_tuple(model.calculate_loss(batch)))
        memory.append((f"batch {index}: after forward + loss", *_rss_now()))
        sampler.phase = f"batch {index}: backward"
        loss.backward()
        del loss
        memory.append((f"batch {index}: after backward", *_rss_now()))
        sampler.phase = f"batch {index}: optimiser step"
        trainer.optimizer.step()
        sampler.phase = "between"
        memory.append((f"batch {index}: after optimiser step", *_rss_now()))
    predict = model.full_sort_predict
    spent = {"full_sort_predict": 0.0}

    def timed_predict(interaction):
        t0 = now()
        out = predict(interaction)
        spent["full_sort_predict"] += now() - t0
        return out

    model.full_sort_predict = timed_predict
    sampler.phase = "evaluate(valid)"
    t = now()
    trainer.evaluate(valid_data)
    evaluation = {"valid_total_s": now() - t, "full_sort_predict_s": spent["full_sort_predict"]}
    sampler.stop()
    model.full_sort_predict = predict
    memory.append(("after evaluation (valid)", *_rss_now()))
    lines = [f"{name:40s} current {cur / 1024:6.2f} GB   peak so far {hwm / 1024:6.2f} GB"
             for name, cur, hwm in memory]
    lines += [f"highest RSS sampled during {name:30s} {mb / 1024:6.2f} GB" for name, mb in sampler.peaks.items()]
    lines.append(f"evaluate(valid): {evaluation['valid_total_s']:.2f} s, of which full_sort_predict "
                 f"{evaluation['full_sort_predict_s']:.2f} s (the rest: MMRec masking, topk, metrics)")
    print("\n".join(lines), flush=True)
    model.train()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.profile):
            batch = next(batches)
            trainer.optimizer.zero_grad()
            with record_function("## calculate_loss"):
                loss = sum(_as_tuple(model.calculate_loss(batch)))
            with record_function("## backward"):
                loss.backward()
            with record_function("## optimiser"):
                trainer.optimizer.step()
        model.eval()
        with torch.no_grad(), record_function("## full_sort_predict (first eval batch)"):
            model.full_sort_predict(next(iter(valid_data)))
    table_self = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    table_shapes = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total",
                                                                      row_limit=20)
    print(table_self)
    print(table_shapes)
    return {"batches": args.profile, "by_op": table_self, "by_shape": table_shapes,
            "memory": "\n".join(lines), "evaluation": evaluation}


class _RssSampler:
    """Samples this process's RSS every few milliseconds, keeping the highest value per phase."""

    def __init__(self, every: float = 0.003):
        import threading

        self.phase = "start"
        self.peaks: Dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            current = _rss_now()[0]
            phase = self.phase
            if current > self.peaks.get(phase, 0.0):
                self.peaks[phase] = current
            time.sleep(every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _rss_now() -> tuple:
    """(current RSS, peak RSS) of this process in MB, from /proc/self/status."""
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024.0
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def _as_tuple(losses):
    return losses if isinstance(losses, tuple) else (losses,)


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


# =============================================================================================
# Parent: orchestration and report


def run_worker(kind: str, args, work: Path, cwd: Path, env: dict) -> dict:
    result = work / f"{kind}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--dataset", args.dataset, "--device", args.device,
           "--batches", str(args.batches), "--our-batches", str(args.our_batches), "--official-src",
           str(args.official_src), "--profile", str(args.profile), "--worker", kind, "--result", str(result)]
    log = work / f"{kind}.log"
    load_before = os.getloadavg()
    t = now()
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=handle, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            print("  " + line, end="", flush=True)
        code = proc.wait()
    wall = now() - t
    if code != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"{kind} worker failed (exit {code}); log {log}:\n{tail}")
    res = json.loads(result.read_text())
    res["wall_s"] = wall
    res["load_before"] = load_before
    res["load_after"] = os.getloadavg()
    return res


def locate(env: str, default: str) -> Path:
    configured = os.environ.get(env)
    return Path(configured or default).expanduser()


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", nargs="+", default=["baby"], choices=sorted(OFFICIAL_SETTINGS),
                    help="one or more datasets, measured one after the other (default baby)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where both sides train and evaluate (default cpu)")
    ap.add_argument("--data", type=Path, default=None,
                    help="folder holding <dataset>/<dataset>.inter (default: ../shared/data)")
    ap.add_argument("--batches", type=int, default=5,
                    help="official training batches timed after one warm-up batch (default 5)")
    ap.add_argument("--our-batches", type=int, default=0,
                    help="time only this many of our batches and extrapolate (default 0: a real full epoch)")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown report, a .json beside it (default bench/results/train.md, train-gpu.md with cuda)")
    ap.add_argument("--official-src", type=Path, default=locate("REARM_OFFICIAL_SRC", "~/REARM-official"))
    ap.add_argument("--mmrec", type=Path, default=locate("MMREC_SRC", "~/MMRec"),
                    help="MMRec checkout (or its src/); only a temporary clone is modified")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--no-warm", action="store_true", help="skip the warm-cache model construction")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="instead of the benchmark: profile N of our training batches (torch.profiler)")
    ap.add_argument("--only", choices=("official", "ours"),
                    help="debugging: run one side only, print its JSON, write no report")
    ap.add_argument("--worker", choices=("official", "ours", "ours_warm", "ours_profile"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        args.dataset = args.dataset[0]
        run = {"official": run_official, "ours": run_ours, "ours_warm": run_ours_warm,
               "ours_profile": run_ours_profile}[args.worker]
        args.result.write_text(json.dumps(run(args), indent=1, default=_plain))
        return

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--device cuda: torch {torch.__version__} sees no CUDA device")
    out = args.out or DEFAULT_OUT[args.device]
    # the workers run in other folders: every path they get is absolute
    args.official_src = args.official_src.resolve()
    mmrec = (args.mmrec.parent if args.mmrec.name == "src" else args.mmrec).resolve()
    data_root = (args.data or (REPO.parent / "shared" / "data")).resolve()
    for what, path in [("official REARM clone (REARM_OFFICIAL_SRC)", args.official_src / "model.py"),
                       ("MMRec checkout (MMREC_SRC)", mmrec / "src" / "main.py")] + [
                       (f"dataset {name}", data_root / name / f"{name}.inter") for name in args.dataset]:
        if not path.is_file():
            raise SystemExit(f"{what}: {path} not found")
    info = machine_info(args.device)
    info.update(mmrec_head=git_head(mmrec), official_head=git_head(args.official_src), our_head=git_head(REPO))
    measured: Dict[str, dict] = {}
    started = now()
    for name in args.dataset:
        one = argparse.Namespace(**{**vars(args), "dataset": name})
        result = measure(one, mmrec, data_root / name, started)
        if result is None:  # --profile / --only: printed, no report
            continue
        measured[name] = result
        # written after each dataset, so an interrupted multi-dataset run keeps what it measured
        if args.device == "cuda":
            text = gpu_report(args, info, measured, now() - started)
        else:
            text = "\n".join(report(argparse.Namespace(**{**vars(args), "dataset": n}), info, m["data"],
                                    m["official"], m["ours"], m["ours_warm"], m["total_s"])
                             for n, m in measured.items())
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        payload = ({"info": info, **measured[name]} if len(args.dataset) == 1 and args.device == "cpu"
                   else {"info": info, "device": args.device, "datasets": measured})
        out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=_plain))
        say(f"written {out} ({', '.join(measured)})")
    if measured:
        print("\n" + out.read_text())


def measure(args, mmrec: Path, data_dir: Path, started: float) -> Optional[dict]:
    """Both sides on one dataset in a temporary work folder -> their results (None for --profile / --only)."""
    work = Path(tempfile.mkdtemp(prefix="rearm-bench-"))
    try:
        say(f"{args.dataset}: work folder {work}")
        data = prepare(args.dataset, data_dir, work, mmrec)
        say(f"data ready in {data['seconds']:.1f}s: {data['n_users']} users, {data['n_items']} items, "
            f"{data['rows']}")
        env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore",
                   MMREC_REARM_CACHE_DIR=str(work / "graph-cache"))
        src = Path(data["clone"]) / "src"
        if args.profile:
            res = run_worker("ours_profile", args, work, src, env)
            print(res["memory"])
            print(res["by_op"])
            return None
        if args.only:
            cwd = Path(data["official_root"]) if args.only == "official" else src
            print(json.dumps(run_worker(args.only, args, work, cwd, env), indent=1, default=_plain))
            return None
        say("official code:")
        off = run_worker("official", args, work, Path(data["official_root"]), env)
        say("ours (MMRec):")
        ours = run_worker("ours", args, work, src, env)
        warm = None if args.no_warm else run_worker("ours_warm", args, work, src, env)
        return {"data": data, "official": off, "ours": ours, "ours_warm": warm, "total_s": now() - started}
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
