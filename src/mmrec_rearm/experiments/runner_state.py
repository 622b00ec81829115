"""Training state files: everything an interrupted MMRec run needs to continue bit for bit.

Runner side (standard library; torch, numpy and random are imported when a function runs, inside
MMRec's process). The recording trainer of :mod:`.runner` saves a state after every finished
epoch and, when a run starts with ``resume`` and finds a matching state, restores it before
MMRec's ``fit`` loop begins and sets MMRec's own ``Trainer.start_epoch``, so the loop continues
with the next epoch. MMRec itself is unchanged.

A state is the ``training-state`` kind of the one checkpoint format (:mod:`.checkpoint_format`,
which lists and checks its fields) and holds:

* ``state_dict``: ``model.state_dict()``; ``model_extra``: what the model returns from an optional
  ``resume_state()`` method (progress it keeps outside its parameters, REARM: its epoch counter),
  given back through ``load_resume_state(extra)``;
* ``optimizer`` and ``lr_scheduler``: their ``state_dict()``;
* ``trainer``: MMRec's early-stopping counter ``cur_step``, ``best_valid_score``,
  ``best_valid_result``, ``best_test_upon_valid`` and ``train_loss_dict``;
* ``rng``: the generators of torch (and CUDA), numpy's global ``RandomState`` (pandas shuffles
  MMRec's training frame with it) and Python's ``random`` (MMRec's negative sampler);
* ``train_order``: the row order of MMRec's training frame, which its loader reshuffles in place
  every epoch (each column as a tensor), and the user order with ``use_full_sampling``;
* ``data_signature``: a hash of the training rows (order-free), so a state is never restored onto
  other data; ``run_key`` and ``config_digest``, so it is never restored into another run;
* ``epoch`` (the last finished one), ``finished`` (MMRec's loop has ended: early stopping, the
  epoch cap or a NaN loss), ``recorder`` (the runner's per-epoch history, JSON text).

Every value is a tensor, a number, a string, None or a list / dict of those, so a state loads
with ``torch.load(weights_only=True)``: reading one runs no code. Files are written through
:mod:`mmrec_rearm.atomic` (a temporary name in the same folder, fsynced, moved into place), so a
state file is always complete. While a run trains, it holds ``<state>.lock`` (:func:`lock`), so two
processes never train, and write the state of, the same run at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import time

try:  # inside the package
    from .. import atomic
    from . import checkpoint_format
    from .runner_events import plain_metrics
except ImportError:  # run by path: runner.py has loaded them under these names
    import _mmrec_rearm_atomic as atomic  # type: ignore[no-redef]
    import _mmrec_rearm_checkpoint_format as checkpoint_format  # type: ignore[no-redef]
    from _mmrec_rearm_runner_events import plain_metrics  # type: ignore[no-redef]

STATE_FORMAT = checkpoint_format.FORMAT
STATE_KIND = checkpoint_format.KIND_STATE


class StateError(ValueError):
    """A state file cannot be used for this run (message names the file and the reason)."""


#: Settings that say where a run happens, not what it computes: a state moves with the run to
#: another GPU or a moved dataset folder.
PLACE_KEYS = ("data_path", "use_gpu", "gpu_id")


def config_digest(config_dict: dict) -> str:
    """Hash of the run's ``config_dict`` without :data:`PLACE_KEYS`."""
    kept = {k: v for k, v in dict(config_dict).items() if k not in PLACE_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# random number generators


def rng_state() -> dict:
    import random

    import numpy as np
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": int(version), "state": torch.tensor(list(internal), dtype=torch.int64),
                        "gauss_next": gauss_next},
             "cuda": None}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    np.random.set_state((saved["name"], saved["keys"].numpy().astype(np.uint32), saved["pos"],
                         saved["has_gauss"], saved["cached_gaussian"]))
    saved = state["python"]
    random.setstate((saved["version"], tuple(int(v) for v in saved["state"].tolist()), saved["gauss_next"]))
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------
# MMRec's training loader


def _frame(train_data):
    dataset = getattr(train_data, "dataset", None)
    frame = getattr(dataset, "df", None)
    return frame if hasattr(frame, "columns") and hasattr(frame, "to_numpy") else None


def train_order(train_data) -> dict:
    """The training frame's current row order (columns as tensors) and, with full sampling, the
    loader's user order. Columns that are not numbers are refused (StateError)."""
    import numpy as np
    import torch

    frame = _frame(train_data)
    if frame is None:
        return {}
    columns, dtypes = {}, {}
    for name in frame.columns:
        values = frame[name].to_numpy()
        if values.dtype.kind not in "biuf":
            raise StateError(f"training column {name!r} has dtype {values.dtype}; only numeric columns can be saved")
        dtypes[str(name)] = values.dtype.str
        stored = values.astype(np.int64) if values.dtype.kind in "bu" else values
        columns[str(name)] = torch.from_numpy(np.ascontiguousarray(stored).copy())
    out = {"columns": columns, "dtypes": dtypes, "order": [str(c) for c in frame.columns], "all_uids": None}
    uids = getattr(train_data, "all_uids", None)
    if getattr(train_data, "use_full_sampling", False) and uids is not None:
        out["all_uids"] = torch.from_numpy(np.asarray(uids).astype(np.int64))
    return out


def set_train_order(train_data, saved: dict) -> None:
    import numpy as np

    frame = _frame(train_data)
    if frame is None or not saved:
        return
    data = {name: np.asarray(saved["columns"][name].numpy(), dtype=np.dtype(saved["dtypes"][name]))
            for name in saved["order"]}
    train_data.dataset.df = type(frame)(data, columns=saved["order"])
    if saved.get("all_uids") is not None:
        train_data.all_uids = np.asarray(saved["all_uids"].numpy(), dtype=np.asarray(train_data.all_uids).dtype)


def data_signature(train_data) -> str:
    """sha256 of the training rows in a canonical order (the frame is reshuffled every epoch)."""
    import numpy as np

    frame = _frame(train_data)
    if frame is None:
        return ""
    digest = hashlib.sha256(json.dumps([str(c) for c in frame.columns]).encode("utf-8"))
    arrays = [frame[c].to_numpy() for c in frame.columns]
    order = np.lexsort(arrays[::-1]) if arrays else np.zeros(0, dtype=np.int64)
    for values in arrays:
        digest.update(np.ascontiguousarray(values[order]).tobytes())
    return digest.hexdigest()[:32]


# ------------------------------------------------------------------------------------------------
# the whole state


def capture(trainer, train_data, *, epoch: int, finished: bool, run_key: str, digest: str, signature: str,
            recorder_json: str) -> dict:
    """The training state after ``epoch`` (see the module doc); tensors are copied to the CPU."""
    model = trainer.model
    extra = model.resume_state() if callable(getattr(model, "resume_state", None)) else None
    scheduler = getattr(trainer, "lr_scheduler", None)
    return checkpoint_format.payload(
        STATE_KIND, run_key=run_key, config_digest=digest, data_signature=signature, epoch=int(epoch),
        finished=bool(finished), saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # one copy each (a GPU tensor's .cpu() already copies; .clone() after it was a second)
        state_dict={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        model_extra=extra,
        optimizer=trainer.optimizer.state_dict(),
        lr_scheduler=scheduler.state_dict() if scheduler is not None else None,
        trainer={"cur_step": int(trainer.cur_step), "best_valid_score": float(trainer.best_valid_score),
                 "best_valid_result": plain_metrics(trainer.best_valid_result),
                 "best_test_upon_valid": plain_metrics(trainer.best_test_upon_valid),
                 "train_loss_dict": {str(k): float(v) for k, v in dict(getattr(trainer, "train_loss_dict", {})).items()}},
        rng=rng_state(),
        train_order=train_order(train_data),
        recorder=recorder_json,
    )


def check(payload: dict, path: str, *, run_key: str, digest: str, signature: str) -> None:
    """Raise StateError unless ``payload`` is a state of this very run on this very data."""
    problems = checkpoint_format.problems(payload, STATE_KIND)
    if problems:
        raise StateError(f"{path}: not a usable mmrec-rearm training state ({'; '.join(problems)})")
    for name, want in (("run_key", run_key), ("config_digest", digest), ("data_signature", signature)):
        if payload.get(name) != want:
            raise StateError(f"{path}: saved by another run ({name} {payload.get(name)!r}, this run {want!r})")


def restore(trainer, train_data, payload: dict) -> None:
    """Put ``payload`` back into MMRec's trainer, model, loader and the random generators."""
    model = trainer.model
    model.load_state_dict(payload["state_dict"])
    if payload.get("model_extra") is not None and callable(getattr(model, "load_resume_state", None)):
        model.load_resume_state(payload["model_extra"])
    trainer.optimizer.load_state_dict(payload["optimizer"])
    if payload.get("lr_scheduler") is not None and getattr(trainer, "lr_scheduler", None) is not None:
        trainer.lr_scheduler.load_state_dict(payload["lr_scheduler"])
    saved = payload["trainer"]
    trainer.cur_step = saved["cur_step"]
    best = saved["best_valid_score"]
    trainer.best_valid_score = int(best) if best == -1 else best
    trainer.best_valid_result = dict(saved["best_valid_result"])
    trainer.best_test_upon_valid = dict(saved["best_test_upon_valid"])
    if hasattr(trainer, "train_loss_dict"):
        trainer.train_loss_dict = {int(k): v for k, v in saved["train_loss_dict"].items()}
    set_train_order(train_data, payload.get("train_order") or {})
    set_rng_state(payload["rng"])  # last: nothing above may draw from them


# ------------------------------------------------------------------------------------------------
# files


def save(path: str, payload: dict, what: str = "the training state") -> None:
    """``torch.save(payload)`` to ``path`` atomically (:func:`mmrec_rearm.atomic.atomic_open`): on any
    error ``path`` is unchanged and no temporary file is left. The one writer of both checkpoint kinds."""
    import torch

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic.atomic_open(path, "wb", what=what) as handle:
        torch.save(payload, handle)


def load(path: str) -> dict:
    """The state at ``path``, read with ``torch.load(weights_only=True)`` (no code runs)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem here
        raise StateError(f"{path}: unreadable training state ({type(exc).__name__}: {exc})") from exc


_HELD = []  # file descriptors of the held locks, released when the process ends


def lock(state_path: str) -> bool:
    """Hold ``<state_path>.lock`` for the life of this process -> True, or False when another
    process holds it (that run is being trained right now; two writers would mix their states)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return True
    os.makedirs(os.path.dirname(os.path.abspath(state_path)), exist_ok=True)
    fd = os.open(state_path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)  # a lock only: nothing is written
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _HELD.append(fd)
    return True
