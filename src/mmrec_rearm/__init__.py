"""mmrec-rearm: REARM as a plug-in model for the MMRec toolbox.

The paper: Shouxing Ma, Yawen Zeng, Shiqing Wu and Guandong Xu, "Refining Contrastive Learning and
Homography Relations for Multi-Modal Recommendation", Proceedings of the 33rd ACM International
Conference on Multimedia (MM '25), 2025, https://doi.org/10.1145/3746027.3755779. Elsewhere in this
package it is "the paper", cited by equation, section, table and figure number.

``mmrec_rearm.REARM`` and ``mmrec_rearm.load_official_state_dict`` are resolved on first access,
so importing the package (e.g. for the CLI, the installer or the graph builders) does not import
torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["REARM", "load_official_state_dict"]

_LAZY = {
    "REARM": ("mmrec_rearm.model.rearm", "REARM"),
    "load_official_state_dict": ("mmrec_rearm.official", "load_official_state_dict"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmrec_rearm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
