"""Cost of one training epoch and one full evaluation of the Table-2 baselines (ApeGNN, MGDN,
MIGGT) on an MMRec dataset folder, outside MMRec and without contention from its evaluator::

    python bench/baselines.py --data ../shared/data/tiktok [--out bench/results/baselines.md]

Each model is built as MMRec would build it (its YAML in configs/model, every grid cut to its
first value, the dataset's two feature files for MIGGT) on the training split, then trained for one
epoch as MMRec's trainer does: every training pair once in a seeded shuffle, batches of 2048, one
negative per pair drawn uniformly among the items the user did not train on, Adam at the YAML's
learning rate. Then one evaluation pass: the representations and the scores of every user against
every item, in batches of 4096 users (MMRec's eval_batch_size). Reported per model: wall time and
process CPU time (all threads) of the epoch and of the evaluation, and the peak RSS of the process
(models run one after another, so the peak is cumulative). Use one thread (the default here) for
numbers comparable across machines with other work on them.
"""
from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from mmrec_rearm.baselines.apegnn import ApeGNN
from mmrec_rearm.baselines.mgdn import MGDN
from mmrec_rearm.baselines.miggt import MIGGT
from mmrec_rearm.data import read_dataset
from mmrec_rearm.host import ArrayDataLoader

REPO = Path(__file__).resolve().parents[1]
MODELS = {"ApeGNN": ApeGNN, "MGDN": MGDN, "MIGGT": MIGGT}


def model_config(name: str, folder: Path, vision: str, text: str) -> dict:
    """The model's YAML as MMRec would give it to one configuration: each list cut to its first value."""
    raw = yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text())
    grid = set(raw.pop("hyper_parameters", []))
    config = {key: (value[0] if key in grid else value) for key, value in raw.items()}
    config.update(device="cpu", data_path=f"{folder.parent}/", dataset=folder.name,
                  vision_feature_file=vision, text_feature_file=text)
    return config


def epoch_batches(train, batch_size: int, seed: int):
    """(3, b) LongTensors: shuffled training pairs with one negative outside the user's training items."""
    rng = np.random.default_rng(seed)
    coo = train.tocoo()
    order = rng.permutation(coo.nnz)
    users, items = coo.row[order].astype(np.int64), coo.col[order].astype(np.int64)
    negatives = rng.integers(0, train.shape[1], len(users))
    clash = np.asarray(train[users, negatives]).ravel() > 0
    while clash.any():
        negatives[clash] = rng.integers(0, train.shape[1], int(clash.sum()))
        clash = np.asarray(train[users, negatives]).ravel() > 0
    for start in range(0, len(users), batch_size):
        part = slice(start, start + batch_size)
        yield torch.from_numpy(np.stack([users[part], items[part], negatives[part]]))


def measure(name: str, data, folder: Path, vision: str, text: str, seed: int) -> dict:
    torch.manual_seed(seed)
    coo = data.interactions.tocoo()
    config = model_config(name, folder, vision, text)
    built = time.perf_counter()
    model = MODELS[name](config, ArrayDataLoader(coo.row, coo.col, data.n_users, data.n_items))
    build_s = time.perf_counter() - built
    optimizer = torch.optim.Adam(model.parameters(), lr=float(config["learning_rate"]))
    model.train()
    wall, cpu = time.perf_counter(), time.process_time()
    losses = []
    for batch in epoch_batches(data.interactions, 2048, seed):
        optimizer.zero_grad()
        loss = sum(model.calculate_loss(batch))
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    epoch_wall, epoch_cpu = time.perf_counter() - wall, time.process_time() - cpu
    model.eval()
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for start in range(0, data.n_users, 4096):
            model.full_sort_predict((torch.arange(start, min(start + 4096, data.n_users)),))
    eval_wall, eval_cpu = time.perf_counter() - wall, time.process_time() - cpu
    return dict(model=name, params=sum(p.numel() for p in model.parameters()), build_s=build_s,
                epoch_wall=epoch_wall, epoch_cpu=epoch_cpu, eval_wall=eval_wall, eval_cpu=eval_cpu,
                batches=len(losses), finite=all(np.isfinite(losses)),
                rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="MMRec dataset folder (<name>.inter + features)")
    parser.add_argument("--vision", default="image_feat.npy")
    parser.add_argument("--text", default="audio_feat.npy", help="the second feature slot (TikTok: audio)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=999)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "baselines.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.data.resolve()
    data = read_dataset(folder, features={"image": args.vision, "text": args.text})
    rows = [measure(name, data, folder, args.vision, args.text, args.seed) for name in args.models]
    lines = [f"# Baselines: one epoch and one evaluation on `{folder.name}`", "",
             f"`python bench/baselines.py --data {args.data} --threads {args.threads}`: {data.n_users} users, "
             f"{data.n_items} items, {data.interactions.nnz} training pairs; batches of 2048; torch "
             f"{torch.__version__}, {args.threads} thread(s), {platform.machine()}, other work running on the "
             "machine (wall times vary with it; CPU times much less).", "",
             "| model | parameters | build s | epoch wall s | epoch CPU s | batches | eval wall s | eval CPU s | "
             "peak RSS MB | losses finite |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']} | {r['build_s']:.2f} | {r['epoch_wall']:.1f} | "
                     f"{r['epoch_cpu']:.1f} | {r['batches']} | {r['eval_wall']:.2f} | {r['eval_cpu']:.2f} | "
                     f"{r['rss_mb']:.0f} | {r['finite']} |")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
