"""The byte-level parser of an ``.inter`` file's integer columns: field bounds of every line (with
file line numbers for messages) and a vectorised parse of plain digits, falling back to an exact
per-field parse that names the offending line. :mod:`.data` validates what comes out.

This module never imports torch or MMRec.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DatasetError

__all__ = ["field_bounds", "parse_int_column"]

# Rows parsed per chunk by the vectorised integer parser; bounds its scratch memory.
_PARSE_CHUNK = 1 << 20


def field_bounds(path: Path, body: bytes, n_cols: int):
    """Start/end byte offsets ``(n_rows, n_cols)`` of every field, and 1-based file line numbers.

    Blank lines are skipped (as pandas does); a line with a different number of fields than the
    header is an error naming the line.
    """
    if body and not body.endswith(b"\n"):
        body = body + b"\n"
    buf = np.frombuffer(body, dtype=np.uint8)
    line_ends = np.flatnonzero(buf == 10)
    line_starts = np.empty_like(line_ends)
    if line_ends.size:
        line_starts[0] = 0
        line_starts[1:] = line_ends[:-1] + 1
    keep = line_ends > line_starts
    is_tab = buf == 9
    tab_count = np.concatenate(([0], np.cumsum(is_tab, dtype=np.int64)))
    tabs_per_line = tab_count[line_ends] - tab_count[line_starts]
    wrong = keep & (tabs_per_line != n_cols - 1)
    if wrong.any():
        k = int(np.argmax(wrong))
        text = body[line_starts[k] : line_ends[k]].decode("utf-8", "replace")
        raise DatasetError(
            f"{path}: line {k + 2} has {int(tabs_per_line[k]) + 1} tab-separated fields but the "
            f"header has {n_cols}: {text[:80]!r}; fix the line or the header (fields are separated by "
            "one tab)."
        )
    line_no = (np.flatnonzero(keep) + 2).astype(np.int64)  # +1 for 1-based, +1 for the header
    n_rows = int(keep.sum())
    # Every kept line has exactly n_cols - 1 tabs and blank lines have none, so all separators
    # sorted together fall into n_cols per row.
    seps = np.sort(np.concatenate((np.flatnonzero(is_tab), line_ends[keep]))).reshape(n_rows, n_cols)
    starts = np.empty_like(seps)
    starts[:, 0] = line_starts[keep]
    starts[:, 1:] = seps[:, :-1] + 1
    return starts, seps, line_no


def parse_int_column(path: Path, body: bytes, starts, ends, line_no, col: int, field: str) -> np.ndarray:
    s = starts[:, col]
    e = ends[:, col]
    out = np.empty(s.shape[0], dtype=np.int64)
    buf = np.frombuffer(body, dtype=np.uint8)
    pow10 = 10 ** np.arange(18, dtype=np.int64)
    for lo in range(0, s.shape[0], _PARSE_CHUNK):
        cs, ce = s[lo : lo + _PARSE_CHUNK], e[lo : lo + _PARSE_CHUNK]
        values = _parse_digits(buf, cs, ce, pow10)
        if values is None:  # something other than plain digits: parse exactly, with messages
            values = _parse_slow(path, body, cs, ce, line_no[lo : lo + _PARSE_CHUNK], field)
        out[lo : lo + cs.shape[0]] = values
    return out


def _parse_digits(buf: np.ndarray, s: np.ndarray, e: np.ndarray, pow10: np.ndarray):
    """Vectorised parse of fields made only of 1..18 ASCII digits; None if any field is not."""
    if s.size == 0:
        return np.empty(0, dtype=np.int64)
    length = e - s
    if length.min() < 1 or length.max() > 18:
        return None
    width = int(length.max())
    pos = np.arange(width)
    inside = pos[None, :] < length[:, None]
    idx = np.where(inside, s[:, None] + pos[None, :], 0)
    digits = buf[idx].astype(np.int64) - 48
    if not ((digits >= 0) & (digits <= 9) | ~inside).all():
        return None
    place = np.where(inside, length[:, None] - 1 - pos[None, :], 0)
    return (np.where(inside, digits, 0) * pow10[place]).sum(axis=1)


def _parse_slow(path: Path, body: bytes, s, e, line_no, field: str) -> np.ndarray:
    values = np.empty(s.shape[0], dtype=np.int64)
    for k, (a, b) in enumerate(zip(s.tolist(), e.tolist())):
        text = body[a:b]
        try:
            values[k] = int(text)
        except (ValueError, OverflowError):
            shown = text.decode("utf-8", "replace")
            raise DatasetError(
                f"{path}: line {int(line_no[k])}, column '{field}' has value {shown!r}, which is "
                f"not an integer; {field} must be a whole number (no decimals or text)."
            ) from None
    return values
