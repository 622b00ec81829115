"""Test-only stand-in for ``torch_scatter``: the MIG-GT authors' ``mirf_gt.py`` imports
``scatter_mean`` (without calling it); this plain-torch version follows torch_scatter's
documented semantics for ``dim=0``-style scattering along ``dim``."""
import torch


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out=None, dim_size=None):
    dim = dim % src.dim()
    size = int(index.max()) + 1 if dim_size is None else int(dim_size)
    shape = list(src.shape)
    shape[dim] = size
    index = index.view([-1 if d == dim else 1 for d in range(src.dim())]).expand_as(src)
    total = src.new_zeros(shape).scatter_add_(dim, index, src)
    count = src.new_zeros(shape).scatter_add_(dim, index, torch.ones_like(src))
    result = total / count.clamp(min=1)
    return result if out is None else out.copy_(result)
