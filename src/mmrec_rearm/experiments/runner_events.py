"""The runner's progress events: what one MMRec run reports on stdout while it trains.

Runner side only (standard library; it runs inside MMRec's process, see :mod:`.runner`). Every
event is one line ``@@mmrec-rearm {json}`` on stdout; :mod:`.launch` reads them and
:mod:`.progress` turns them into the lines and the progress bar a person sees. Events:

* ``start``: ``mmrec_log``, ``device``, ``epochs`` (MMRec's epoch cap), ``resumed_from`` (the last
  finished epoch of a resumed run, else None);
* ``batch``: ``epoch``, ``batch`` (1-based), ``batches``, ``seconds`` (inside the epoch so far);
  at most every :data:`BATCH_EVERY_S` seconds, plus the last batch of the epoch;
* ``epoch``: ``epoch``, ``epochs``, ``train_s``, ``eval_s``, ``losses`` (name -> sum over the
  epoch's batches, as MMRec sums them), ``loss`` (their total), ``valid_metric``, ``valid_score``,
  ``valid`` (every validation metric; never the test split), ``best_score``, ``best_epoch``,
  ``improved``, ``nan``, ``elapsed``;
* ``state`` (a training state was saved: ``epoch``, ``path``), ``checkpoint``, ``end``.

Loss names: MMRec sums a model's loss tuple and logs its terms as ``train_loss1..n`` (dropping the
epoch prefix of its own log line). A model names its terms with a class attribute
``loss_names`` (REARM: bpr, cl, ort, reg); otherwise they are ``loss1..n``, and a single loss is
``loss``.
"""
from __future__ import annotations

import json
import logging
import math
import re
import sys
import time

PROGRESS_PREFIX = "@@mmrec-rearm "
#: Seconds between two ``batch`` events of one epoch (the last batch is always reported).
BATCH_EVERY_S = 0.5

_METRIC_PAIR = re.compile(r"([A-Za-z]+@\d+): ([-+0-9.eE]+)")


def emit(event: dict) -> None:
    sys.stdout.write(PROGRESS_PREFIX + json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


def number(value):
    """``value`` as a finite float, or None (NaN, inf, not a number)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def plain_metrics(result) -> dict:
    return {str(k): float(v) for k, v in dict(result or {}).items()}


def loss_names(model, count: int) -> list:
    """Names of a model's ``count`` loss terms (see the module doc)."""
    declared = getattr(model, "loss_names", None)
    if isinstance(declared, (list, tuple)) and len(declared) == count and all(isinstance(n, str) for n in declared):
        return list(declared)
    return ["loss"] if count == 1 else [f"loss{i + 1}" for i in range(count)]


def named_losses(model, total) -> dict:
    """MMRec's epoch loss (a float, or a tuple of per-term sums) -> {name: float or None}."""
    values = list(total) if isinstance(total, (tuple, list)) else [total]
    return dict(zip(loss_names(model, len(values)), (number(v) for v in values)))


class Batches:
    """``train_data`` as MMRec's ``_train_epoch`` iterates it, reporting ``batch`` events.

    Iterating delegates to the loader (so its shuffling and sampling are exactly MMRec's); every
    other attribute is the loader's own.
    """

    def __init__(self, loader, epoch: int):
        self._loader, self._epoch = loader, epoch

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        try:
            total = len(self._loader)
        except TypeError:
            total = None
        began = last = time.time()
        count = 0
        for batch in self._loader:
            yield batch
            count += 1
            now = time.time()
            if now - last >= BATCH_EVERY_S or (total is not None and count >= total):
                last = now
                emit({"event": "batch", "epoch": self._epoch, "batch": count, "batches": total,
                      "seconds": round(now - began, 2)})


class EpochRecorder:
    """The per-epoch history of a run, filled from the recording trainer's hooks."""

    def __init__(self, started: float):
        self.started = started
        self.history = []
        self.best_epoch = None
        self.nan_epoch = None
        self.epochs = None          # MMRec's cap (trainer.epochs)
        self.stopped_early = False
        self._pending = None        # the trained-but-not-yet-evaluated epoch

    def trained(self, model, epoch: int, out, seconds: float, evaluates: bool) -> None:
        """After ``_train_epoch``: ``out`` is its return value; ``evaluates``: MMRec evaluates
        this epoch (``(epoch + 1) % eval_step == 0``)."""
        total = out[0] if isinstance(out, tuple) and len(out) == 2 else out
        nan = hasattr(total, "dim") and hasattr(total, "item")  # MMRec returns the NaN loss tensor itself
        if nan:
            self.nan_epoch = epoch
            total = None
        losses = {} if total is None else named_losses(model, total)
        values = list(losses.values())
        entry = {"epoch": epoch, "loss": sum(values) if values and None not in values else None,
                 "losses": losses, "train_s": round(seconds, 3), "eval_s": None, "valid_score": None}
        if nan or not evaluates:
            self.history.append(entry)
            self._report(entry, nan=nan)
        else:
            self._pending = entry

    def evaluated(self, trainer, valid_score, valid: dict, seconds: float) -> None:
        """After the test evaluation of an epoch (MMRec's early stopping has run by then)."""
        entry = self._pending or {"epoch": len(self.history), "loss": None, "losses": {}, "train_s": None}
        self._pending = None
        entry.update(eval_s=round(seconds, 3), valid_score=number(valid_score))
        improved = getattr(trainer, "cur_step", None) == 0
        if improved:
            self.best_epoch = entry["epoch"]
        stopping = getattr(trainer, "stopping_step", None)
        if isinstance(stopping, int) and getattr(trainer, "cur_step", 0) > stopping:
            self.stopped_early = True
        self.history.append(entry)
        self._report(entry, valid=valid, trainer=trainer, improved=improved)

    def _report(self, entry: dict, valid=None, trainer=None, improved=False, nan=False) -> None:
        best = getattr(trainer, "best_valid_score", None) if trainer is not None else None
        emit({"event": "epoch", **entry, "epochs": self.epochs,
              "valid_metric": str(getattr(trainer, "valid_metric", "") or "") or None,
              "valid": plain_metrics(valid) if valid is not None else None,
              "best_score": number(best) if best is not None and best != -1 else None,
              "best_epoch": self.best_epoch, "improved": improved, "nan": nan,
              "elapsed": round(time.time() - self.started, 2)})

    def to_json(self) -> str:
        return json.dumps({"history": self.history, "best_epoch": self.best_epoch, "nan_epoch": self.nan_epoch,
                           "stopped_early": self.stopped_early})

    def load_json(self, text: str) -> None:
        saved = json.loads(text)
        self.history = list(saved.get("history") or [])
        self.best_epoch = saved.get("best_epoch")
        self.nan_epoch = saved.get("nan_epoch")
        self.stopped_early = bool(saved.get("stopped_early"))


def missing_package(exc: BaseException):
    """Name of the first module that could not be imported in the exception chain, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name.split(".")[0]
        exc = exc.__cause__ or exc.__context__
    return None


def log_file():
    """MMRec's log file (the root logger's file handler), or None."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def parse_final_lines(text: str):
    """(valid, test) metric dicts from the last "best valid result:" line of an MMRec log and the
    first single-line "test result:" after it; (None, None) when absent. Values have 4 decimals."""
    lines = text.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if "best valid result: " in lines[index]:
            valid = dict((k, float(v)) for k, v in _METRIC_PAIR.findall(lines[index].split("best valid result: ", 1)[1]))
            for later in lines[index + 1:]:
                if "test result: " in later:
                    pairs = _METRIC_PAIR.findall(later.split("test result: ", 1)[1])
                    if pairs:
                        return valid, dict((k, float(v)) for k, v in pairs)
            return valid, None
    return None, None
