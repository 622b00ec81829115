"""The runner's in-memory fixes of MMRec models that fail as shipped (runner side, standard library).

DRAGON and DualGNN create ``result_embed`` as ``nn.Parameter(...).to(device)``. On a GPU ``.to()``
returns a plain tensor copy, which ``forward()`` later replaces; on the CPU it returns the Parameter
itself, which stays registered, and the first ``forward()`` fails ("cannot assign
'torch.FloatTensor' as parameter 'result_embed'"). When quick_start builds such a model, the
runner turns that registered Parameter back into the plain tensor a GPU run has (same values; no
longer in ``parameters()``, so the optimiser sees what it sees on a GPU). Only quick_start's own
reference to ``get_model`` is wrapped, in memory; no file changes. Set ``MMREC_REARM_HOST_FIXES=0``
to run the models exactly as MMRec ships them.
"""
from __future__ import annotations

import os

#: MMRec model -> attributes that it registers as Parameters only on the CPU (see the module doc).
CPU_PARAMETER_FIXES = {"DRAGON": ("result_embed",), "DualGNN": ("result_embed",)}
#: Set to 0 / false / no / off to run those models without the CPU fix.
HOST_FIXES_ENV = "MMREC_REARM_HOST_FIXES"


def env_off(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


def unregister_cpu_parameters(model, names) -> list:
    """Replace each Parameter ``names`` that ``model`` (or a submodule) registered on the CPU by a
    plain tensor with the same values and ``requires_grad``, as ``Parameter.to(cuda)`` gives on a
    GPU. -> descriptions of what was changed (empty when nothing was)."""
    changed = []
    for prefix, module in model.named_modules():
        for name in names:
            param = getattr(module, "_parameters", {}).get(name)
            if param is None or getattr(param.device, "type", None) != "cpu":
                continue
            del module._parameters[name]
            setattr(module, name, param.detach().clone().requires_grad_(param.requires_grad))
            where = f"{prefix}.{name}" if prefix else name
            changed.append(f"{type(model).__name__}.{where}: CPU-registered Parameter {tuple(param.shape)} "
                           "made a plain tensor, as .to(device) gives on a GPU")
    return changed


def wrap_get_model(original_get_model, model_name: str, applied: list):
    """quick_start's ``get_model`` with the CPU fix of ``model_name`` applied to what it builds
    (``applied`` collects the descriptions), or None when the model needs no fix or fixes are off."""
    names = CPU_PARAMETER_FIXES.get(model_name, ())
    if not names or original_get_model is None or env_off(HOST_FIXES_ENV):
        return None

    def get_model_with_cpu_fix(name):
        model_class = original_get_model(name)

        def build(*args, **kwargs):
            instance = model_class(*args, **kwargs)
            applied.extend(unregister_cpu_parameters(instance, names))
            return instance
        return build
    return get_model_with_cpu_fix
