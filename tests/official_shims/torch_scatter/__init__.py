"""Test-only stand-in for ``torch_scatter``: the calls the authors' code makes, in plain torch,
following torch_scatter's documented semantics. MICRO's ``utility/norm.py`` calls ``scatter_add``
on 1-d inputs; the MIG-GT authors' ``mirf_gt.py`` imports ``scatter_mean`` (without calling it)."""
import torch


def _scatter_sum(src: torch.Tensor, index: torch.Tensor, dim: int, dim_size):
    dim = dim % src.dim()
    size = int(index.max()) + 1 if dim_size is None else int(dim_size)
    shape = list(src.shape)
    shape[dim] = size
    index = index.view([-1 if d == dim else 1 for d in range(src.dim())]).expand_as(src)
    return src.new_zeros(shape).scatter_add_(dim, index, src), index, shape


def scatter_add(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out=None, dim_size=None):
    total, _, _ = _scatter_sum(src, index, dim, dim_size)
    return total if out is None else out.copy_(total)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out=None, dim_size=None):
    total, index, shape = _scatter_sum(src, index, dim, dim_size)
    count = src.new_zeros(shape).scatter_add_(dim % src.dim(), index, torch.ones_like(src))
    result = total / count.clamp(min=1)
    return result if out is None else out.copy_(result)
