"""AdamW's decoupled weight decay for a model whose host steps it with an optimizer that has none
(MMRec builds ``Adam(weight_decay=0)``): the ``lambda_p ||Theta||^2`` term of eq. (22) as the
official code realises it.

Before any optimizer steps (a global optimizer step pre-hook, torch >= 2.0), every parameter of an
attached model that this optimizer holds and that has a gradient is multiplied by
``1 - lr * weight``, where ``lr`` is the learning rate of the parameter's group in *that* optimizer
at that moment. This is AdamW's own first operation (``param.mul_(1 - lr * weight_decay)``, also
skipping parameters without a gradient), so Adam + this hook is AdamW, under whatever learning-rate
schedule the host applies to its optimizer.

Models are held weakly; :func:`attach` is idempotent and also called again on unpickled or
deep-copied models (``REARM.__setstate__``).
"""
from __future__ import annotations

import weakref
from typing import Any, Iterable

import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

__all__ = ["attach", "detach", "attached_weight", "decay_before_step"]

_MODELS: "weakref.WeakKeyDictionary[nn.Module, float]" = weakref.WeakKeyDictionary()
_HOOK: Any = None


def attach(model: nn.Module, weight: float) -> None:
    """Decay ``model``'s parameters with ``weight`` (> 0) before each step of any optimizer holding them."""
    global _HOOK
    if _HOOK is None:
        _HOOK = register_optimizer_step_pre_hook(_before_step)
    _MODELS[model] = float(weight)


def detach(model: nn.Module) -> None:
    _MODELS.pop(model, None)


def attached_weight(model: nn.Module) -> float:
    """The decay weight ``model`` is attached with, 0.0 when it is not attached."""
    return _MODELS.get(model, 0.0)


def decay_before_step(optimizer: torch.optim.Optimizer, parameters: Iterable[torch.Tensor], weight: float) -> int:
    """Multiply each of ``parameters`` that ``optimizer`` holds and that has a gradient by
    ``1 - group lr * weight`` (its param group's current learning rate) -> how many were decayed."""
    mine = {id(p) for p in parameters}
    decayed = 0
    with torch.no_grad():
        for group in optimizer.param_groups:
            factor = 1 - group["lr"] * weight
            for p in group["params"]:
                if p.grad is not None and id(p) in mine:
                    p.mul_(factor)
                    decayed += 1
    return decayed


def _before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for model, weight in list(_MODELS.items()):
        decay_before_step(optimizer, model.parameters(), weight)
