"""What a person sees while MMRec trains: the runner's events (:mod:`.runner_events`) as a
progress bar inside each epoch and one line per epoch.

On a terminal the bar is redrawn in place (``\\r``) and replaced by the epoch's line when the
epoch ends; when the output is not a terminal (a log file, CI, ``| tee``) there is no bar, only a
plain line every :data:`PLAIN_EVERY_S` seconds of a long epoch. ``run``, ``compare`` (and every
command built on :func:`~mmrec_rearm.experiments.launch.launch`) show the same lines::

    epoch   3/30   12.4 s (train 11.2 + eval 1.2)  bpr 20.6931  cl 0.0012  ort 0.0003  reg 0.0000  valid recall@20 0.0412  best 0.0412 (epoch 3) *

``*`` marks an epoch that improved the best validation score. No third-party progress library:
the events come from another process, so a library's wrapping of an iterable buys nothing, and
twenty lines do the drawing.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

#: Without a terminal, one plain progress line per this many seconds inside an epoch.
PLAIN_EVERY_S = 30.0
_BAR_WIDTH = 24


def _num(value, digits: int = 4) -> str:
    """4 decimals; very small non-zero values (weighted loss terms) in scientific notation."""
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if value == 0 or abs(value) >= 10 ** -(digits - 1) else f"{value:.{digits - 1}e}"


def epoch_line(event: dict, indent: str = "") -> str:
    """One ``epoch`` event as the line shown to the user (see the module doc)."""
    epoch, cap = event.get("epoch"), event.get("epochs")
    label = f"epoch {epoch:>3}" + (f"/{cap}" if cap else "")
    train, evaluate = event.get("train_s"), event.get("eval_s")
    total = (train or 0.0) + (evaluate or 0.0)
    timing = f"{total:6.1f} s" + (f" (train {train:.1f} + eval {evaluate:.1f})" if train is not None and evaluate is not None
                                  else "")
    parts = [label, timing]
    if event.get("nan"):
        parts.append("loss is NaN: MMRec stops training here")
    else:
        parts += [f"{name} {_num(value)}" for name, value in (event.get("losses") or {}).items()]
    if event.get("valid_score") is not None:
        metric = event.get("valid_metric") or "valid"
        parts.append(f"valid {metric} {_num(event['valid_score'])}")
        parts.append(f"best {_num(event.get('best_score'))} (epoch {event.get('best_epoch')})"
                     + (" *" if event.get("improved") else ""))
    return indent + "  ".join(parts)


class ProgressDisplay:
    """Event handler: draws the bar and prints epoch lines through ``say`` (a line printer).

    ``stream``: where the bar is drawn (default stdout). ``bar``: draw it (default: when ``say`` is
    ``print`` and the stream is a terminal); without it a plain progress line is printed every
    ``plain_every_s`` seconds of an epoch instead.
    """

    def __init__(self, say: Callable[[str], None] = print, stream: Optional[TextIO] = None, *,
                 indent: str = "", plain_every_s: float = PLAIN_EVERY_S, bar: Optional[bool] = None):
        self.say, self.indent, self.plain_every_s = say, indent, plain_every_s
        if bar is None:
            bar = say is print and (stream or sys.stdout).isatty()
        self.stream = (stream or sys.stdout) if bar else None
        self._drawn = False
        self._last_plain = None

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "batch":
            self._batch(event)
        elif kind == "epoch":
            self._clear()
            self._last_plain = None
            self.say(epoch_line(event, self.indent))
        elif kind == "start":
            if event.get("device"):
                self.say(f"{self.indent}device {event['device']}, MMRec log {event.get('mmrec_log')}")
            if event.get("resumed_from") is not None:
                self.say(f"{self.indent}resuming after epoch {event['resumed_from']} from {event.get('state_path')}")
        elif kind in ("state_ignored", "state_error", "checkpoint_error"):
            self._clear()
            self.say(f"{self.indent}note: {event.get('message')}")
        elif kind == "end":
            self._clear()

    def _batch(self, event: dict) -> None:
        done, total, seconds = event.get("batch") or 0, event.get("batches"), float(event.get("seconds") or 0.0)
        head = f"{self.indent}epoch {event.get('epoch'):>3}"
        if total:
            left = seconds / done * (total - done) if done else 0.0
            tail = f"{done}/{total} batches  {seconds:.1f} s, ~{left:.0f} s left"
        else:
            tail = f"{done} batches  {seconds:.1f} s"
        if self.stream is not None:
            filled = int(_BAR_WIDTH * done / total) if total else 0
            bar = "[" + "#" * filled + "." * (_BAR_WIDTH - filled) + "]"
            self.stream.write(f"\r{head} {bar} {tail}\033[K")
            self.stream.flush()
            self._drawn = True
            return
        now = time.monotonic()
        if self._last_plain is None:
            self._last_plain = now - seconds
        if now - self._last_plain >= self.plain_every_s and (not total or done < total):
            self._last_plain = now
            self.say(f"{head}: {tail}")

    def _clear(self) -> None:
        if self._drawn and self.stream is not None:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False
