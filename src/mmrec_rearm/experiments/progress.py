"""Progress of one MMRec run, read from MMRec's own log records: per-epoch events on stdout, the
per-epoch history, and the final "best valid result" / "test result" lines of its log file.

Part of the runner (:mod:`.runner`), which runs inside MMRec's process: only the standard library is
imported, and the runner loads this file by path.
"""
from __future__ import annotations

import json
import logging
import math
import re
import sys
import time

PROGRESS_PREFIX = "@@mmrec-rearm "

_EVAL_LINE = re.compile(r"epoch (\d+) evaluating \[time: ([0-9.]+)s, valid_score: ([-+0-9.eEnaif]+)\]")
_TRAIN_LINE = re.compile(r"training \[time: ([0-9.]+)s")
_LOSS_VALUE = re.compile(r"train(?:_| )loss\d*: ([-+0-9.eEnaif]+)")
_NAN_LINE = re.compile(r"Loss is nan at epoch: (\d+)")
_METRIC_PAIR = re.compile(r"([A-Za-z]+@\d+): ([-+0-9.eE]+)")


def emit(event: dict) -> None:
    """One progress line on stdout: :data:`PROGRESS_PREFIX` and the event as JSON."""
    sys.stdout.write(PROGRESS_PREFIX + json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


def _number(text: str):
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class Watcher(logging.Handler):
    """Turns MMRec's per-epoch log records into progress events and a history list."""

    def __init__(self, started: float):
        super().__init__(level=logging.INFO)
        self.started = started
        self.trainer = None
        self.history = []
        self.best_epoch = None
        self.nan_epoch = None
        self._loss = None
        self._train_s = None
        # seconds of the last _train_epoch as timed by the recording trainer: MMRec's log line has
        # no time for models whose loss is a tuple (its formatter overwrites the time prefix)
        self.timed_train_s = None

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D401 - logging API
        try:
            self._consume(record.getMessage())
        except Exception:  # progress must never break a run
            pass

    def _consume(self, message: str) -> None:
        train = _TRAIN_LINE.search(message)
        losses = _LOSS_VALUE.findall(message)
        if train or losses:
            self._train_s = float(train.group(1)) if train else self.timed_train_s
            values = [_number(v) for v in losses]
            self._loss = sum(values) if values and None not in values else None
            return
        nan = _NAN_LINE.search(message)
        if nan:
            self.nan_epoch = int(nan.group(1))
            return
        found = _EVAL_LINE.search(message)
        if not found:
            return
        epoch = int(found.group(1))
        score = _number(found.group(3))
        # MMRec's early_stopping has already run when this line is logged: cur_step is 0 exactly
        # when this epoch became the best one.
        if self.trainer is not None and getattr(self.trainer, "cur_step", None) == 0:
            self.best_epoch = epoch
        best = getattr(self.trainer, "best_valid_score", None)
        entry = {"epoch": epoch, "loss": self._loss, "train_s": self._train_s,
                 "eval_s": float(found.group(2)), "valid_score": score}
        self.history.append(entry)
        emit({"event": "epoch", **entry, "best_epoch": self.best_epoch,
              "best_score": float(best) if best is not None and best != -1 else None,
              "elapsed": round(time.time() - self.started, 2)})


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
