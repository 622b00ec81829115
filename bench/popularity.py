"""Most-popular reference ranking for an MMRec-format dataset: the floor any model should beat.

Every user gets the same ranking, items ordered by their number of training interactions (ties by
item id); each user's own training items are excluded, as MMRec's evaluator does for valid and test.
Recall@k and NDCG@k follow MMRec's definitions (``utils/metrics.py``): recall = hits in the top k /
number of held-out items; NDCG's ideal DCG counts min(k, held-out items) hits. Users are those with
at least one held-out item in the split. No torch, no MMRec::

    python bench/popularity.py ../shared/data/tiktok [--out bench/results/popularity_tiktok.md]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mmrec_rearm.data import read_interactions, training_matrix  # noqa: E402

TOP_KS = (10, 20)


def popularity_metrics(users: np.ndarray, items: np.ndarray, labels: np.ndarray, split: int,
                       top_ks: Sequence[int] = TOP_KS) -> Dict[str, float]:
    """Recall@k / NDCG@k of the popularity ranking on ``split`` (1 valid, 2 test), averaged over
    the users with held-out items in it. Inputs are the ``(n_rows,)`` columns of the .inter file."""
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    train, test = labels == 0, labels == split
    history = training_matrix(users[train], items[train], n_users, n_items)  # duplicate rows count once
    held = training_matrix(users[test], items[test], n_users, n_items)
    degree = np.asarray(history.sum(axis=0)).ravel()
    order = np.lexsort((np.arange(n_items), -degree))  # most popular first, ties by item id
    k_max = max(top_ks)
    discounts = 1.0 / np.log2(np.arange(2, k_max + 2))
    evaluated = np.flatnonzero(np.diff(held.indptr))
    sums = {f"{name}@{k}": 0.0 for k in top_ks for name in ("recall", "ndcg")}
    for user in evaluated:
        seen = history.indices[history.indptr[user]:history.indptr[user + 1]]
        truth = held.indices[held.indptr[user]:held.indptr[user + 1]]
        # the first k_max items of the global order that the user has not trained on
        candidates = order[:k_max + len(seen)]
        top = candidates[~np.isin(candidates, seen)][:k_max]
        hit = np.isin(top, truth).astype(np.float64)
        for k in top_ks:
            sums[f"recall@{k}"] += hit[:k].sum() / len(truth)
            ideal = discounts[:min(k, len(truth))].sum()
            sums[f"ndcg@{k}"] += (hit[:k] * discounts[:k]).sum() / ideal
    out = {name: value / len(evaluated) for name, value in sums.items()}
    out["users"] = float(len(evaluated))
    return out


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset_dir", type=Path, help="folder with <name>.inter (MMRec format)")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    inter = sorted(args.dataset_dir.glob("*.inter"))
    if len(inter) != 1:
        parser.error(f"{args.dataset_dir}: expected exactly one *.inter file, found {len(inter)}")
    rows = read_interactions(inter[0])
    lines = [f"Most-popular ranking on `{inter[0].name}` (training items excluded, MMRec's metric definitions)", "",
             "| split | users | R@10 | R@20 | N@10 | N@20 |", "|---|---|---|---|---|---|"]
    for split, name in ((1, "valid"), (2, "test")):
        m = popularity_metrics(rows.users, rows.items, rows.labels, split)
        lines.append(f"| {name} | {int(m['users'])} | {m['recall@10']:.4f} | {m['recall@20']:.4f} | "
                     f"{m['ndcg@10']:.4f} | {m['ndcg@20']:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
