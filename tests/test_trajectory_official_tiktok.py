"""Training trajectories on the real TikTok subset: the TikTok runs of tests/test_trajectory_official.py
(its docstring says what is compared and checked), in a file of their own so that the two test workers,
which each take whole files, run the Baby and the TikTok trajectories at the same time.
"""
from __future__ import annotations

import pytest

pytest.importorskip("torch")

from test_trajectory_official import TIKTOK_RUNS, case, check_trajectory, mmrec  # noqa: E402,F401


@pytest.mark.parametrize("case, training, precision", TIKTOK_RUNS,
                         ids=[f"{n}-{t.name}-{p}" for n, t, p in TIKTOK_RUNS], indirect=["case"])
def test_training_trajectory_matches_official(case, training, precision, mmrec, official, record_property):
    check_trajectory(case, training, precision, mmrec, official, record_property)
