"""Seeded demo dataset in MMRec's format, with planted multimodal structure.

Every item has four latent factor blocks: a *shared* block ``(n_items, k_shared)`` seen by both
modalities, an *image-only* and a *text-only* block ``(n_items, k_unique)``, and a *nuisance*
block ``(n_items, k_nuisance)`` seen by both modalities that no user cares about. The image
features ``(n_items, image_dim)`` are a noisy random linear map of [shared, nuisance,
image-only]; the text features ``(n_items, text_dim)`` of [shared, nuisance, text-only]. Users
hold a vector per relevant block, and the affinity of user u for item i is

    a(u, i) = sharpness * (w_s <p_u, s_i> / sqrt(k_s) + w_v <q_u, v_i> / sqrt(k_u)
                           + w_t <r_u, t_i> / sqrt(k_u)) + b_i

with ``b_i`` a per-item popularity. Each user draws 15-25 items without replacement from
``softmax(a(u, .))`` (Gumbel top-k), then the set is 5-core filtered, re-indexed densely and split
per user in time order 8:1:1 (at least one valid and one test item per user). Because every
block drives preferences and each modality sees only part of them, item features carry real
signal and the two modalities complement each other, while part of what the modalities share
is irrelevant. See docs/demo-dataset.md.

numpy only; the same arguments give bit-identical files.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Tuple, Union

import numpy as np

__all__ = [
    "DemoData",
    "generate_demo",
    "make_demo_dataset",
    "demo_dataset_files",
    "demo_dataset_yaml",
    "modality_signal",
    "INTER_COLUMNS",
]

INTER_COLUMNS = ("userID", "itemID", "rating", "timestamp", "x_label")
# Users processed per block when sampling, so memory stays (block, n_items) for any n_users.
# Fixed (not tuned to the machine): it fixes the order of random draws, hence the output bytes.
_USER_BLOCK = 256
_T0 = 1_500_000_000  # first timestamp (seconds); interactions spread over ~3 years
_T_SPAN = 3 * 365 * 24 * 3600


@dataclass(frozen=True)
class DemoData:
    """The generated dataset in memory, after 5-core filtering and re-indexing.

    Interaction arrays are ``(n_rows,)`` sorted by (user, timestamp); latent arrays are indexed by
    the new dense ids. ``latent`` keys: ``item_shared``, ``item_image``, ``item_text``,
    ``item_nuisance`` ``(n_items, k)``, ``user_shared``, ``user_image``, ``user_text`` ``(n_users, k)``,
    ``popularity`` ``(n_items,)``.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    labels: np.ndarray  # 0 train / 1 valid / 2 test
    features: dict  # "image" -> (n_items, image_dim), "text" -> (n_items, text_dim), float32
    latent: dict
    factor_weights: Tuple[float, float, float]
    sharpness: float

    @property
    def n_users(self) -> int:
        return int(self.latent["user_shared"].shape[0])

    @property
    def n_items(self) -> int:
        return int(self.latent["item_shared"].shape[0])

    def affinity(self, users: np.ndarray, items: np.ndarray, parts: str = "all") -> np.ndarray:
        """True affinity ``(len(users),)`` for paired ids; ``parts`` picks one block
        (``"shared"``, ``"image"``, ``"text"``), ``"popularity"`` or ``"all"``."""
        return _affinity_pairs(self.latent, self.factor_weights, self.sharpness, users, items, parts)


def _block_scores(latent: Mapping[str, np.ndarray], weights, sharpness: float, users) -> np.ndarray:
    """Affinity ``(len(users), n_items)`` float64 for a block of users (eq. in the module doc)."""
    total = None
    for (w, key) in zip(weights, ("shared", "image", "text")):
        u = latent[f"user_{key}"][users]
        i = latent[f"item_{key}"]
        part = (w / np.sqrt(i.shape[1])) * (u @ i.T)
        total = part if total is None else total + part
    return sharpness * total + latent["popularity"][None, :]


def _affinity_pairs(latent, weights, sharpness, users, items, parts: str) -> np.ndarray:
    users = np.asarray(users)
    items = np.asarray(items)
    if parts == "popularity":
        return latent["popularity"][items].copy()
    out = np.zeros(users.shape[0])
    for w, key in zip(weights, ("shared", "image", "text")):
        if parts not in ("all", key):
            continue
        u = latent[f"user_{key}"][users]
        i = latent[f"item_{key}"][items]
        out += sharpness * (w / np.sqrt(i.shape[1])) * np.einsum("nk,nk->n", u, i)
    if parts == "all":
        out += latent["popularity"][items]
    elif parts not in ("shared", "image", "text"):
        raise ValueError(f"parts={parts!r}: use 'all', 'shared', 'image', 'text' or 'popularity'")
    return out


def generate_demo(
    n_users: int = 2000,
    n_items: int = 1000,
    seed: int = 0,
    *,
    image_dim: int = 64,
    text_dim: int = 48,
    shared_dim: int = 8,
    unique_dim: int = 4,
    nuisance_dim: int = 4,
    factor_weights: Tuple[float, float, float] = (1.0, 1.0, 1.0),
    sharpness: float = 1.5,
    popularity_std: float = 1.0,
    feature_noise: float = 0.5,
    per_user: Tuple[int, int] = (15, 25),
    core: int = 5,
) -> DemoData:
    """Generate the demo dataset in memory (see the module docstring for the model).

    ``factor_weights`` = (shared, image-only, text-only) weight in the affinity; set one to 0 to
    make that block invisible to preferences (a control for tests). ``feature_noise`` is the std
    of the isotropic noise added to each feature entry (signal entries have unit variance).
    """
    lo, hi = int(per_user[0]), int(per_user[1])
    if not (1 <= lo <= hi <= n_items):
        raise ValueError(f"per_user={per_user}: need 1 <= low <= high <= n_items ({n_items})")
    if n_users < 1 or core < 1:
        raise ValueError(f"n_users={n_users}, core={core}: both must be >= 1")
    if core < 3:
        # fewer than 3 items per user cannot give every user train, valid and test rows
        raise ValueError(f"core={core}: must be >= 3 so each user keeps train, valid and test items")
    rng = np.random.default_rng(seed)
    latent = {
        "item_shared": rng.standard_normal((n_items, shared_dim)),
        "item_image": rng.standard_normal((n_items, unique_dim)),
        "item_text": rng.standard_normal((n_items, unique_dim)),
        "item_nuisance": rng.standard_normal((n_items, nuisance_dim)),
        "popularity": popularity_std * rng.standard_normal(n_items),
        "user_shared": rng.standard_normal((n_users, shared_dim)),
        "user_image": rng.standard_normal((n_users, unique_dim)),
        "user_text": rng.standard_normal((n_users, unique_dim)),
    }
    # The nuisance block is seen by both modalities but drives no preference: shared yet
    # recommendation-irrelevant content (the paper's "noise in modal-shared features").
    features = {
        "image": _render(rng, [latent["item_shared"], latent["item_nuisance"], latent["item_image"]],
                         image_dim, feature_noise),
        "text": _render(rng, [latent["item_shared"], latent["item_nuisance"], latent["item_text"]],
                        text_dim, feature_noise),
    }
    weights = tuple(float(w) for w in factor_weights)

    counts = rng.integers(lo, hi + 1, size=n_users)
    users_out, items_out = [], []
    for start in range(0, n_users, _USER_BLOCK):
        block = np.arange(start, min(start + _USER_BLOCK, n_users))
        # Gumbel top-k = sampling without replacement from softmax(affinity).
        noisy = _block_scores(latent, weights, sharpness, block) + rng.gumbel(size=(block.size, n_items))
        top = np.argpartition(-noisy, hi - 1, axis=1)[:, :hi]
        # argpartition's order inside the top set is implementation-defined: sort it by score.
        order = np.argsort(-np.take_along_axis(noisy, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        take = np.arange(hi)[None, :] < counts[block][:, None]
        users_out.append(np.broadcast_to(block[:, None], top.shape)[take])
        items_out.append(top[take])
    users = np.concatenate(users_out).astype(np.int64)
    items = np.concatenate(items_out).astype(np.int64)
    times = _T0 + rng.integers(0, _T_SPAN, size=users.size)

    users, items, times = _k_core(users, items, times, core)
    kept_users, users = np.unique(users, return_inverse=True)
    kept_items, items = np.unique(items, return_inverse=True)
    latent = {
        key: (arr[kept_users] if key.startswith("user_") else arr[kept_items])
        for key, arr in latent.items()
    }
    features = {name: np.ascontiguousarray(arr[kept_items]) for name, arr in features.items()}

    order = np.lexsort((items, times, users))
    users, items, times = users[order], items[order], times[order]
    labels = _chronological_split(users)
    return DemoData(
        users=users,
        items=items,
        timestamps=times,
        labels=labels,
        features=features,
        latent=latent,
        factor_weights=weights,
        sharpness=float(sharpness),
    )


def _render(rng, blocks, dim: int, noise: float) -> np.ndarray:
    """Features ``(n_items, dim)`` float32: random linear map of the factor blocks plus noise."""
    factors = np.concatenate(blocks, axis=1)
    mixing = rng.standard_normal((factors.shape[1], dim)) / np.sqrt(factors.shape[1])
    clean = factors @ mixing
    return (clean + noise * rng.standard_normal(clean.shape)).astype(np.float32)


def _k_core(users, items, times, core: int):
    """Drop rows until every remaining user and item has >= ``core`` rows (iterated to a fixpoint)."""
    while True:
        user_count = np.bincount(users)
        item_count = np.bincount(items)
        keep = (user_count[users] >= core) & (item_count[items] >= core)
        if keep.all():
            return users, items, times
        users, items, times = users[keep], items[keep], times[keep]


def _chronological_split(users: np.ndarray) -> np.ndarray:
    """x_label per row for rows sorted by (user, time): last ~10% test, previous ~10% valid.

    Rounds half up and keeps at least one valid and one test row per user (users have >= 3 rows).
    """
    count = np.bincount(users)
    first = np.concatenate(([0], np.cumsum(count)[:-1]))
    pos = np.arange(users.size) - first[users]
    n = count[users]
    n_test = np.maximum(1, np.floor(0.1 * n + 0.5)).astype(np.int64)
    n_valid = n_test  # same rule, so 8:1:1
    labels = np.zeros(users.size, dtype=np.int64)
    labels[pos >= n - n_test - n_valid] = 1
    labels[pos >= n - n_test] = 2
    return labels


def demo_dataset_files(
    name: str = "rearm_demo",
    n_users: int = 2000,
    n_items: int = 1000,
    seed: int = 0,
    **options,
) -> Dict[str, bytes]:
    """The demo dataset's files in memory: file name -> bytes (see :func:`make_demo_dataset`)."""
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"name={name!r}: must be a plain folder name")
    demo = generate_demo(n_users=n_users, n_items=n_items, seed=seed, **options)
    table = np.stack(
        [demo.users, demo.items, np.ones_like(demo.users), demo.timestamps, demo.labels], axis=1
    )
    inter = io.BytesIO()
    np.savetxt(inter, table, fmt="%d", delimiter="\t", header="\t".join(INTER_COLUMNS), comments="")
    files = {f"{name}.inter": inter.getvalue()}
    for modality, arr in demo.features.items():
        buffer = io.BytesIO()
        np.save(buffer, arr)
        files[f"{modality}_feat.npy"] = buffer.getvalue()
    return files


def make_demo_dataset(
    out_dir: Union[str, "os.PathLike[str]"],
    name: str = "rearm_demo",
    n_users: int = 2000,
    n_items: int = 1000,
    seed: int = 0,
    **options,
) -> Path:
    """Write the demo dataset to ``<out_dir>/<name>/`` and return that folder.

    Files: ``<name>.inter`` (tab-separated, header ``userID itemID rating timestamp x_label``;
    rating is always 1, implicit feedback), ``image_feat.npy`` and ``text_feat.npy`` (float32).
    ``options`` go to :func:`generate_demo`. Existing files of the same names are replaced
    atomically.
    """
    from .atomic import write_bytes

    files = demo_dataset_files(name, n_users=n_users, n_items=n_items, seed=seed, **options)
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, content in files.items():
        write_bytes(folder / file_name, content, what="the demo dataset")
    return folder


def demo_dataset_yaml(name: str = "rearm_demo") -> str:
    """MMRec dataset config (``src/configs/dataset/<name>.yaml``) for a demo dataset folder."""
    return (
        f"# MMRec dataset config for the mmrec-rearm demo dataset '{name}' (synthetic).\n"
        "USER_ID_FIELD: userID\n"
        "ITEM_ID_FIELD: itemID\n"
        "TIME_FIELD: timestamp\n"
        "\n"
        "filter_out_cod_start_users: True\n"
        "\n"
        f"inter_file_name: '{name}.inter'\n"
        "\n"
        "vision_feature_file: 'image_feat.npy'\n"
        "text_feature_file: 'text_feat.npy'\n"
        "\n"
        'field_separator: "\\t"\n'
    )


def modality_signal(
    users: np.ndarray,
    items: np.ndarray,
    features: Mapping[str, np.ndarray],
    n_pairs: int = 20000,
    seed: int = 0,
) -> dict:
    """How much each modality's features agree with who interacts with what.

    For item pairs taken by the same user (sampled from the rows ``users``/``items``, ``(n,)``)
    against uniformly random item pairs, returns per modality::

        {"full": mean cos(co-interacted) - mean cos(random),
         "unique": the same gap on the part of the features that the other modalities cannot
                   linearly explain (least-squares residual)}

    A clearly positive ``unique`` gap means the modality carries preference signal that the others
    lack. Feature arrays are ``(n_items, d_m)``.
    """
    rng = np.random.default_rng(seed)
    users = np.asarray(users)
    items = np.asarray(items)
    n_items = next(iter(features.values())).shape[0]
    order = np.argsort(users, kind="stable")
    su, si = users[order], items[order]
    count = np.bincount(su)
    first = np.concatenate(([0], np.cumsum(count)[:-1]))
    eligible = np.flatnonzero(count >= 2)
    who = rng.choice(eligible, size=n_pairs)
    a = rng.integers(0, count[who])
    b = (a + rng.integers(1, count[who])) % count[who]  # a different row of the same user
    left, right = si[first[who] + a], si[first[who] + b]
    rand_l = rng.integers(0, n_items, n_pairs)
    rand_r = (rand_l + rng.integers(1, n_items, n_pairs)) % n_items  # never the same item

    centred = {m: f.astype(np.float64) - f.mean(axis=0) for m, f in features.items()}
    out = {}
    for m, x in centred.items():
        others = [v for k, v in centred.items() if k != m]
        if others:
            basis = np.concatenate(others, axis=1)
            coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
            resid = x - basis @ coef
        else:
            resid = x
        out[m] = {
            "full": _cos_gap(x, left, right, rand_l, rand_r),
            "unique": _cos_gap(resid, left, right, rand_l, rand_r),
        }
    return out


def _cos_gap(x, left, right, rand_l, rand_r) -> float:
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    pos = np.einsum("nd,nd->n", unit[left], unit[right]).mean()
    neg = np.einsum("nd,nd->n", unit[rand_l], unit[rand_r]).mean()
    return float(pos - neg)
