"""Reading the metrics MMRec prints: the one parser of its ``name@k: value`` pairs and of the final
result lines of its log.

MMRec writes a metric dictionary as ``recall@10: 0.0500    ndcg@10: 0.0300    ...`` (its
``dict2str``): in the epoch lines, in the ``best valid result:`` / ``test result:`` lines at the end
of a run, and in the ``Valid:`` / ``Test:`` lines of the block its ``quick_start`` logs last.
Standard library only: the run's child process (:mod:`.experiments.runner`) loads it by path.
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

__all__ = ["METRIC_PAIR", "metric_pairs", "parse_final_lines"]

#: One ``name@k: value`` pair (the value as MMRec's ``%.04f`` or in exponent form).
METRIC_PAIR = re.compile(r"([A-Za-z0-9_]+@\d+):\s*(-?[0-9.]+(?:[eE][-+]?\d+)?)")


def metric_pairs(text: str) -> Dict[str, float]:
    """Every ``name@k: value`` pair of ``text`` -> {name@k: value}, names as printed."""
    return {key: float(value) for key, value in METRIC_PAIR.findall(text)}


def parse_final_lines(text: str) -> Tuple[Optional[Dict[str, float]], Optional[Dict[str, float]]]:
    """(valid, test) metric dicts from the last "best valid result:" line of an MMRec log and the
    first single-line "test result:" after it; (None, None) when absent. Values have 4 decimals."""
    lines = text.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if "best valid result: " in lines[index]:
            valid = metric_pairs(lines[index].split("best valid result: ", 1)[1])
            for later in lines[index + 1:]:
                if "test result: " in later:
                    pairs = metric_pairs(later.split("test result: ", 1)[1])
                    if pairs:
                        return valid, pairs
            return valid, None
    return None, None
