"""The markdown reports of bench/train.py: the CPU report (one dataset, RSS) and the GPU report
(``--device cuda``: epoch, evaluation and peak GPU memory per dataset), and the machine description."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Optional

from train_settings import GPU_TARGETS, OFFICIAL_COMMON, OFFICIAL_SETTINGS, TARGETS


def git_head(folder: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short=10", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" + local changes" if dirty else "")
    except (subprocess.CalledProcessError, OSError):
        return "unknown"


def machine_info(device: str = "cpu") -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    import numpy
    import pandas
    import scipy
    import torch

    info = {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "os": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "scipy": scipy.__version__, "pandas": pandas.__version__, "device": device}
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory=f"{props.total_memory / 2 ** 30:.0f} GiB", cuda=torch.version.cuda)
    return info


def _fmt_s(x: Optional[float]) -> str:
    return "n/a" if x is None else (f"{x:.2f} s" if x < 100 else f"{x:.0f} s")


def evaluation_note(off: dict, ours: dict) -> str:
    """Why the valid + test evaluation target can or cannot be met through MMRec's evaluator."""
    off_eval = off["eval_valid_s"] + off["eval_test_s"]
    our_eval = ours["eval_valid_s"] + ours["eval_test_s"]
    host = our_eval - ours["eval_predict_s"]
    target = TARGETS["evaluation"]
    if our_eval / off_eval <= target:
        return ""
    verdict = ("so no change inside the model can meet the target while MMRec's trainer and evaluator run "
               "unchanged" if host / off_eval > target else "so the model's share is what is left to cut")
    return (f"Evaluation target: MMRec's own evaluation loop (run unchanged: masking of training items, "
            f"`torch.topk` up to k = 50 and its per-user Python membership test for 4 metrics) takes "
            f"{host:.2f} s of our {our_eval:.2f} s, by itself {host / off_eval:.2f}× the official "
            f"{off_eval:.2f} s, above the {target:g}× target, {verdict}. The model's part "
            f"(`full_sort_predict`, representations computed once for both splits) is "
            f"{ours['eval_predict_s'] / off['eval_predict_s']:.2f}× the official model's; under the official "
            f"protocol (top-k 10/20, 3 metrics) our whole evaluation is "
            f"{ours['eval_official_protocol_s'] / off_eval:.2f}× the official one.")


def report(args, info: dict, data: dict, off: dict, ours: dict, warm: Optional[dict], total_s: float) -> str:
    b = off["batches"][1:] or off["batches"]
    mean = {k: sum(r[k] for r in b) / len(b) for k in ("data", "forward", "backward", "optimiser")}
    per_batch = sum(mean.values())
    off_epoch = per_batch * off["batches_per_epoch"]
    off_eval = off["eval_valid_s"] + off["eval_test_s"]
    our_eval = ours["eval_valid_s"] + ours["eval_test_s"]
    n_our = ours["timed_batches"]
    our_parts = {k: v / max(n_our, 1) for k, v in ours["epoch_parts_s"].items()}
    rows = []

    def row(name, o, u, target=None, unit="s"):
        ratio = u / o if o else float("nan")
        met = "" if target is None else ("**yes**" if ratio <= target else "**no**")
        tgt = "" if target is None else f"≤ {target:g}×"
        if unit == "s":
            fo, fu = _fmt_s(o), _fmt_s(u)
        elif unit == "MB":
            fo, fu = f"{o / 1024:.2f} GB", f"{u / 1024:.2f} GB"
        else:
            fo, fu = f"{o:,}", f"{u:,}"
        rows.append(f"| {name} | {fo} | {fu} | {ratio:.3f}× | {tgt} | {met} |")

    row("**training epoch**", off_epoch, ours["epoch_s"], TARGETS["epoch"])
    row("**evaluation, valid + test**", off_eval, our_eval, TARGETS["evaluation"])
    row("**peak RSS** (measuring process)", off["peak_rss_mb"], ours["peak_rss_mb"], TARGETS["peak_rss"], "MB")
    row("per batch: forward + loss", mean["forward"], our_parts["forward"])
    row("per batch: backward (ours: + trainer bookkeeping)", mean["backward"], our_parts["backward"])
    row("per batch: optimiser step", mean["optimiser"], our_parts["optimiser"])
    row("per batch: waiting for the batch (sampling)", mean["data"], our_parts["data"])
    row("evaluation: valid", off["eval_valid_s"], ours["eval_valid_s"])
    row("evaluation: test", off["eval_test_s"], ours["eval_test_s"])
    row("evaluation, valid + test: inside the model's `full_sort_predict`", off["eval_predict_s"],
        ours["eval_predict_s"])
    row("evaluation, valid + test: the host's masking, top-k and metrics", off_eval - off["eval_predict_s"],
        our_eval - ours["eval_predict_s"])
    row("evaluation, valid + test, ours under the official protocol (top-k 10/20, 3 metrics)", off_eval,
        ours["eval_official_protocol_s"])
    row("dataset + graphs (official `Load_dataset`; ours: model construction, cold cache)",
        off["load_dataset_s"] + off["model_init_s"], ours["model_init_s"])
    row("parameters", off["parameters"], ours["parameters"], unit="n")

    met_all = (ours["epoch_s"] / off_epoch <= TARGETS["epoch"] and our_eval / off_eval <= TARGETS["evaluation"]
               and ours["peak_rss_mb"] / off["peak_rss_mb"] <= TARGETS["peak_rss"])
    s = OFFICIAL_SETTINGS[args.dataset]
    lines = [
        "# REARM training benchmark: MMRec plug-in vs the official code",
        "",
        f"Produced by `python bench/train.py --dataset {args.dataset} --batches {args.batches}"
        + (f" --our-batches {args.our_batches}" if args.our_batches else "")
        + f"` on {time.strftime('%Y-%m-%d %H:%M %Z')}; whole run {total_s / 60:.1f} min. "
        "Random features: these numbers are about speed and memory only, never about quality.",
        "",
        f"All three targets met: **{'yes' if met_all else 'no'}**.",
        "",
        "| measure | official | ours (MMRec) | ours / official | target | met |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        *([evaluation_note(off, ours), ""] if evaluation_note(off, ours) else []),
        "How each number was taken:",
        "",
        f"* **official epoch** = {off['batches_per_epoch']} batches per epoch × {per_batch:.2f} s, the mean of "
        f"{len(b)} timed batches of {OFFICIAL_COMMON['batch_size']} (after one warm-up batch, "
        f"{sum(off['batches'][0][k] for k in mean):.2f} s, not counted) drawn by the official `DataLoader` "
        f"(num_workers={off['num_workers']}, as the official Config picks on this machine). Extrapolated, "
        "not measured: every batch runs the full-graph forward, so its cost hardly depends on the batch "
        "(the last, smaller batch costs about the same).",
        f"* **our epoch** = one real full epoch through MMRec's `Trainer._train_epoch` ({n_our} batches"
        + (f", extrapolated from {n_our} to {ours['batches_per_epoch']}" if args.our_batches else "")
        + "); forward (`calculate_loss`) and the optimiser step are timed by wrappers, data by timing "
        "the `TrainDataLoader`, backward is the remainder (including MMRec's per-batch `clone()` and "
        "`.item()` calls).",
        "* **evaluation** = the official `evaluate_model` on valid, then on test (the official "
        "`full_sort_predict` runs the forward once per 8192-user batch; top-k 10/20, Precision, Recall, "
        "NDCG), against MMRec's `Trainer.evaluate` on valid, then on test (batches of "
        f"{ours['config'].get('eval_batch_size', '?')} users; MMRec's default protocol: top-k 5/10/20/50, "
        "Recall, NDCG, Precision, MAP), each after the training above. Time inside `full_sort_predict` is "
        "measured by a wrapper; the rest is the host's loop (masking, `torch.topk`, and the evaluator's "
        "Python membership test per user and ranked position, so it grows with the largest k). The row "
        "'under the official protocol' repeats our valid + test evaluation with MMRec configured to the "
        "official top-k and metrics, for a like-for-like comparison.",
        "* **peak RSS** = `ru_maxrss` of the measuring process, which holds everything from data "
        "loading to evaluation (official: " + ", ".join(f"{k} {v / 1024:.2f} GB" for k, v in off["rss_mb"].items())
        + f"; its DataLoader worker peaked at {off['children_peak_rss_mb'] / 1024:.2f} GB, not included. "
        "Ours: " + ", ".join(f"{k} {v / 1024:.2f} GB" for k, v in ours["rss_mb"].items()) + ").",
        f"* **graphs**: official `Load_dataset` {off['load_dataset_s']:.1f} s (co-occurrence, dict and kNN "
        f"graphs) + `REARM.__init__` {off['model_init_s']:.1f} s (normalised adjacency, top-k sampling, "
        f"fusion); its two evaluation loaders took another {off['eval_loaders_s']:.1f} s. Ours: model "
        f"construction with a fresh, empty graph cache {ours['model_init_s']:.1f} s"
        + (f", of which graphs {ours['graph']['seconds']:.1f} s (built, stored in the cache)"
           if ours.get("graph") else "")
        + (f"; again with the warm cache {warm['model_init_s']:.1f} s in a separate process"
           + (f", graphs {'read from the cache' if warm['graph']['hit'] else 'BUILT AGAIN'} in "
              f"{warm['graph']['seconds']:.2f} s" if warm.get("graph") else "") if warm else "")
        + f"; MMRec's own dataset + loaders {ours['data_loaders_s']:.1f} s.",
        "",
        "## Setup",
        "",
        f"* Machine: {info['cpu']}, {info['cores']} cores, {info['memory']} RAM; {info['os']}; "
        f"CPU only, torch threads: official {off['threads']}, ours {ours['threads']}.",
        f"* Load average (1/5/15 min) before → after: official {_load(off['load_before'])} → "
        f"{_load(off['load_after'])}; ours {_load(ours['load_before'])} → {_load(ours['load_after'])}.",
        f"* Versions: Python {info['python']}, torch {info['torch']}, numpy {info['numpy']}, scipy "
        f"{info['scipy']}, pandas {info['pandas']}. MMRec {info['mmrec_head']} (temporary clone, "
        f"`mmrec_rearm.install` applied); official REARM {info['official_head']} (Python 3.11 fix of "
        f"docs/testing.md); mmrec-rearm {info['our_head']}.",
        f"* Data: `{data['source']}`: {data['n_users']:,} users, {data['n_items']:,} items, train / valid / "
        f"test rows {data['rows']['train']:,} / {data['rows']['valid']:,} / {data['rows']['test']:,}"
        + (" (ids re-indexed to be contiguous)" if data["reindexed"] else "")
        + f"; features uniform random float32 in [0, 1), image {data['image_dim']}-d and text "
        f"{data['text_dim']}-d, seed {data['feature_seed']}, identical for both sides.",
        f"* Official settings ({args.dataset}, README): "
        + ", ".join(f"{k}={v}" for k, v in s.items())
        + f"; lr {OFFICIAL_COMMON['learning_rate']}, AdamW(weight_decay=reg_weight), batch "
        f"{OFFICIAL_COMMON['batch_size']}, embedding {OFFICIAL_COMMON['embedding_dim']}, seed {OFFICIAL_COMMON['seed']}.",
        "* Ours (MMRec config after our YAML files, `-d " + args.dataset + "`, defaults): "
        + ", ".join(f"{k}={v}" for k, v in ours["config"].items()) + f"; MMRec optimiser {ours['optimiser']}. "
        "The model logged: " + " / ".join(f"`{line}`" for line in ours.get("model_log", [])
                                          if line.startswith("REARM") and "graphs" not in line) + ".",
        f"* Losses (sanity): official first timed batch total {b[0]['loss']:.4f}; ours mean per-term "
        f"{', '.join(f'{x:.4g}' for x in ours['loss_terms'])}. Metrics after one step/epoch (random "
        f"features, meaningless): official valid Recall@20 {off['valid_result'].get('Recall@20')}, ours "
        f"{ours['valid_result'].get('recall@20')}.",
    ]
    return "\n".join(lines) + "\n"


def _load(values) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _official_epoch(off: dict) -> tuple:
    """(extrapolated official epoch, mean per-batch parts, timed batches) from its timed batches."""
    timed = off["batches"][1:] or off["batches"]
    mean = {k: sum(r[k] for r in timed) / len(timed) for k in ("data", "forward", "backward", "optimiser")}
    return sum(mean.values()) * off["batches_per_epoch"], mean, timed


def gpu_report(args, info: dict, measured: dict, total_s: float) -> str:
    """The --device cuda report: per dataset, epoch, valid + test evaluation and peak GPU memory."""
    lines = [
        "# REARM training benchmark on a GPU: MMRec plug-in vs the official code",
        "",
        f"Produced by `python bench/train.py --device cuda --dataset {' '.join(measured)} --batches {args.batches}"
        + (f" --our-batches {args.our_batches}" if args.our_batches else "") + ("" if not args.no_warm else " --no-warm")
        + f"` on {time.strftime('%Y-%m-%d %H:%M %Z')}; whole run {total_s / 60:.1f} min. GPU: {info.get('gpu', '?')} "
        f"({info.get('gpu_memory', '?')}, CUDA {info.get('cuda', '?')}), {info['cpu']}, {info['cores']} cores; "
        f"torch {info['torch']}, numpy {info['numpy']}, scipy {info['scipy']}, Python {info['python']}. MMRec "
        f"{info.get('mmrec_head')}, official REARM {info.get('official_head')}, mmrec-rearm {info.get('our_head')}.",
        "",
        f"Targets: epoch ≤ {GPU_TARGETS['epoch']:g}× and peak GPU memory ≤ {GPU_TARGETS['peak_gpu']:g}× the official.",
        "",
    ]
    for name, m in measured.items():
        off, ours, data = m["official"], m["ours"], m["data"]
        off_epoch, mean, timed = _official_epoch(off)
        off_eval = off["eval_valid_s"] + off["eval_test_s"]
        our_eval = ours["eval_valid_s"] + ours["eval_test_s"]
        n_our = max(ours["timed_batches"], 1)
        parts = {k: v / n_our for k, v in ours["epoch_parts_s"].items()}
        rows = []

        def row(label, o, u, target=None, unit="s"):
            ratio = u / o if o else float("nan")
            met = "" if target is None else ("**yes**" if ratio <= target else "**no**")
            fo, fu = ((_fmt_s(o), _fmt_s(u)) if unit == "s" else (f"{o / 1024:.2f} GB", f"{u / 1024:.2f} GB"))
            rows.append(f"| {label} | {fo} | {fu} | {ratio:.3f}× | {'' if target is None else f'≤ {target:g}×'} | {met} |")

        row("**training epoch**", off_epoch, ours["epoch_s"], GPU_TARGETS["epoch"])
        row("**peak GPU memory**, whole run (`max_memory_allocated`)", off["peak_gpu_mb"], ours["peak_gpu_mb"],
            GPU_TARGETS["peak_gpu"], "MB")
        row("peak GPU memory, training + evaluation only", off["peak_gpu_train_eval_mb"],
            ours["peak_gpu_train_eval_mb"], unit="MB")
        row("evaluation, valid + test", off_eval, our_eval)
        row("evaluation inside the model's `full_sort_predict`", off["eval_predict_s"], ours["eval_predict_s"])
        row("evaluation, ours under the official protocol (top-k 10/20, 3 metrics)", off_eval,
            ours["eval_official_protocol_s"])
        row("per batch: forward + loss", mean["forward"], parts["forward"])
        row("per batch: backward (ours: + trainer bookkeeping)", mean["backward"], parts["backward"])
        row("per batch: optimiser step", mean["optimiser"], parts["optimiser"])
        row("dataset + graphs (official `Load_dataset` + model; ours: model construction, cold cache)",
            off["load_dataset_s"] + off["model_init_s"], ours["model_init_s"])
        row("peak host RSS (measuring process)", off["peak_rss_mb"], ours["peak_rss_mb"], unit="MB")
        lines += [
            f"## {name}",
            "",
            f"{data['n_users']:,} users, {data['n_items']:,} items, train / valid / test rows "
            f"{data['rows']['train']:,} / {data['rows']['valid']:,} / {data['rows']['test']:,}; features "
            f"{data.get('features', 'random')} ({data['image_dim']}-d + {data['text_dim']}-d); official settings "
            f"{name} ({'the Baby settings' if name == 'tiktok' else 'README'}), lr {OFFICIAL_COMMON['learning_rate']}, "
            f"batch {OFFICIAL_COMMON['batch_size']}.",
            "",
            "| measure | official | ours (MMRec) | ours / official | target | met |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Official epoch = {off['batches_per_epoch']} batches × the mean of {len(timed)} timed batches after a "
            f"warm-up (extrapolated); ours = {'a real full epoch' if not args.our_batches else 'extrapolated from '}"
            f"{'' if not args.our_batches else str(ours['timed_batches']) + ' batches'} through MMRec's "
            f"`Trainer._train_epoch` ({ours['batches_per_epoch']} batches). Every timer synchronises the GPU. GPU "
            "memory by stage, official: " + ", ".join(f"{k} {v / 1024:.2f} GB" for k, v in off["gpu_mb_by_stage"].items())
            + "; ours: " + ", ".join(f"{k} {v / 1024:.2f} GB" for k, v in ours["gpu_mb_by_stage"].items())
            + " (each the peak since the last reset; the reset is after model construction). The official "
            "`Load_dataset` builds its graphs on the GPU; ours are built on the host and moved with the model.",
            "",
        ]
    return "\n".join(lines) + "\n"
