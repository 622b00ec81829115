"""The runner's in-memory fixes of MMRec models that fail as shipped on a CPU-only host with the
packages it has (runner side, standard library); :mod:`.runner` applies them and lists them under
``host_fixes`` in the run's record.

Nothing in the MMRec checkout is changed, and each fix only does what the model's own code would
get on the host it was written for (a GPU, torch_scatter installed):

* **CPU-registered parameters** (DRAGON, DualGNN; :data:`CPU_PARAMETER_FIXES`): these models create
  ``result_embed`` as ``nn.Parameter(...).to(device)``. On a GPU ``.to()`` returns a plain tensor
  copy, which ``forward()`` later replaces; on the CPU it returns the Parameter itself, which stays
  registered, and the first ``forward()`` fails ("cannot assign 'torch.FloatTensor' as parameter
  'result_embed'"). When the model is built, that Parameter becomes the plain tensor a GPU run has
  (same values; no longer in ``parameters()``, so the optimiser sees what it sees on a GPU).
* **Unconditional ``.cuda()``** (LATTICE, GRCN, MGCN; :data:`CUDA_CALL_MODELS`): on a host without CUDA,
  ``Tensor.cuda()`` returns the tensor itself, where the run is on the CPU anyway.
* **torch_scatter** (SLMRec imports it, MGCN's graph helper in MMRec's ``utils`` calls
  ``scatter_add``; :data:`SCATTER_MODELS`): when it is not installed (it has no wheel for every
  torch), its ``scatter`` / ``scatter_add`` / ``scatter_mean`` are served by torch_geometric's
  ``utils.scatter`` (same semantics, plain torch), which MMRec's graph models need anyway.

Set ``MMREC_REARM_HOST_FIXES=0`` to run the models exactly as MMRec ships them. Imports only the
standard library at module level (the run process may lack our package's dependencies; the runner
loads this file by path).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import List

#: MMRec model -> attributes that it registers as Parameters only on the CPU.
CPU_PARAMETER_FIXES = {"DRAGON": ("result_embed",), "DualGNN": ("result_embed",)}
#: MMRec models that call ``.cuda()`` whatever the configured device.
CUDA_CALL_MODELS = ("LATTICE", "GRCN", "MGCN")
#: MMRec models that import torch_scatter (directly or through MMRec's ``utils``).
SCATTER_MODELS = ("SLMRec", "MGCN")
#: Set to 0 / false / no / off to run the models without these fixes.
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


def cuda_identity(model: str) -> List[str]:
    """For a model of :data:`CUDA_CALL_MODELS` on a host without CUDA: ``Tensor.cuda()`` returns
    the tensor itself, for the rest of this process. -> description, or [] when not applied."""
    if model not in CUDA_CALL_MODELS:
        return []
    import torch  # only now: a run that needs no fix should not pay for importing torch

    if torch.cuda.is_available():
        return []
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    return [f"{model}: Tensor.cuda() returns the tensor itself (no CUDA on this host; the model calls "
            ".cuda() whatever the configured device)"]


def _scatter_module(scatter) -> types.ModuleType:
    module = types.ModuleType("torch_scatter")
    module.__doc__ = "torch_scatter's scatter functions served by torch_geometric.utils.scatter (mmrec-rearm host fix)"

    def scatter_any(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
        result = scatter(src, index, dim=dim % src.dim(), dim_size=dim_size, reduce=reduce)
        return result if out is None else out.copy_(result)

    module.scatter = scatter_any
    module.scatter_add = lambda src, index, dim=-1, out=None, dim_size=None: scatter_any(src, index, dim, out, dim_size, "sum")
    module.scatter_mean = lambda src, index, dim=-1, out=None, dim_size=None: scatter_any(src, index, dim, out, dim_size, "mean")
    return module


def torch_scatter_from_pyg(model: str) -> List[str]:
    """For a model of :data:`SCATTER_MODELS` when torch_scatter is not installed but
    torch_geometric is: a ``torch_scatter`` module in ``sys.modules`` whose functions call
    ``torch_geometric.utils.scatter``. -> description, or [] when not applied."""
    if (model not in SCATTER_MODELS or "torch_scatter" in sys.modules
            or importlib.util.find_spec("torch_scatter") is not None
            or importlib.util.find_spec("torch_geometric") is None):
        return []
    from torch_geometric.utils import scatter

    sys.modules["torch_scatter"] = _scatter_module(scatter)
    return [f"{model}: torch_scatter is not installed; its scatter, scatter_add and scatter_mean are "
            "served by torch_geometric.utils.scatter"]


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


def apply_import_fixes(model: str) -> List[str]:
    """The fixes needed before MMRec imports and builds ``model`` (all but the CPU-parameter one,
    which runs on the built model) -> what was applied."""
    if env_off(HOST_FIXES_ENV):
        return []
    return cuda_identity(model) + torch_scatter_from_pyg(model)
