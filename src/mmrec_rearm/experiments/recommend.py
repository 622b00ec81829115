"""``recommend``: top-k item lists for given users from a saved checkpoint (no MMRec trainer needed).

The model is rebuilt with :func:`.checkpoints.rebuild_model`; scores are its ``full_sort_predict``
(the dot products MMRec ranks by). Each user's training items are excluded, as MMRec's evaluation
does, and the rest are ranked by score, ties by the smaller item id. Output rows ``(user, rank,
item, score)``, rank 1 = best; a CSV with that header when ``out_csv`` is given.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.sparse as sp

from ..atomic import check_writable, write_text
from ..errors import ConfigError
from .checkpoints import rebuild_model, scores

PathLike = Union[str, "os.PathLike[str]"]
Row = Tuple[int, int, int, float]
CSV_HEADER = ("user", "rank", "item", "score")


def read_users_file(path: PathLike) -> List[int]:
    """User ids from a text file: integers separated by whitespace or commas; ``#`` starts a comment,
    and a first line ``user`` (a CSV header) is skipped."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: users file not found; give a text file with one user id per line.")
    users = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].replace(",", " ").strip()
        if not text or (number == 1 and text.lower().split()[0] == "user"):
            continue
        for token in text.split():
            try:
                users.append(int(token))
            except ValueError:
                raise ConfigError(f"{path}: line {number} has {token!r}, not an integer user id.") from None
    if not users:
        raise ConfigError(f"{path}: no user ids in the file.")
    return users


def _check_users(users: Iterable[Any], n_users: int) -> np.ndarray:
    out = []
    for user in users:
        if isinstance(user, bool) or not isinstance(user, (int, np.integer)):
            raise ConfigError(f"users: {user!r} is not an integer user id.")
        if not 0 <= int(user) < n_users:
            raise ConfigError(f"users: id {int(user)} is outside the dataset's users 0..{n_users - 1}.")
        out.append(int(user))
    if not out:
        raise ConfigError("users: give at least one user id.")
    return np.array(list(dict.fromkeys(out)), dtype=np.int64)  # repeated ids: once, first position


def rank_items(user_scores: np.ndarray, users: np.ndarray, exclude: Optional[sp.csr_matrix], k: int) -> List[Row]:
    """Top ``k`` of each row of ``user_scores`` (n, n_items) for ``users`` (n,), leaving out
    ``exclude[user]`` items; descending score, ties by item id. A user with fewer than ``k`` allowed
    items gets fewer rows."""
    rows: List[Row] = []
    for index, user in enumerate(users):
        values = np.asarray(user_scores[index], dtype=np.float64).copy()
        if exclude is not None:
            values[exclude.indices[exclude.indptr[user]:exclude.indptr[user + 1]]] = -np.inf
        order = np.argsort(-values, kind="stable")[:k]
        for rank, item in enumerate(order, start=1):
            if not np.isfinite(values[item]):
                break
            rows.append((int(user), rank, int(item), float(values[item])))
    return rows


def recommendations_csv(rows: Sequence[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for user, rank, item, score in rows:
        writer.writerow([user, rank, item, format(score, ".8g")])
    return out.getvalue()


def recommend(checkpoint: PathLike, users: Sequence[int], top_k: int = 20, out_csv: Optional[PathLike] = None, *,
              data_dir: Optional[PathLike] = None, exclude_train: bool = True, batch_size: int = 1024,
              cache_dir: Any = None, allow_other_data: bool = False) -> List[Row]:
    """Top-``top_k`` items for each of ``users`` from the model saved in ``checkpoint``.

    data_dir / cache_dir / allow_other_data: see :func:`.checkpoints.rebuild_model` (a dataset that
    is not the one the model was trained on is refused). exclude_train=False keeps the training
    items in the lists. Writes ``out_csv`` (columns user, rank, item, score; atomically, its folder
    checked before the model is rebuilt) when given; returns the rows either way.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k: expected a positive integer, got {top_k!r}.")
    if out_csv is not None:
        check_writable(Path(out_csv).parent, what="the recommendations CSV")
    loaded = rebuild_model(checkpoint, data_dir=data_dir, cache_dir=cache_dir, allow_other_data=allow_other_data)
    ids = _check_users(users, loaded.splits.n_users)
    rows: List[Row] = []
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        rows += rank_items(scores(loaded.model, batch, batch_size), batch,
                           loaded.splits.train if exclude_train else None, top_k)
    if out_csv is not None:
        write_text(out_csv, recommendations_csv(rows), what="the recommendations CSV")
    return rows
