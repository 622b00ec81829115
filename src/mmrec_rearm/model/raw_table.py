"""A table of raw modal vectors, held in row blocks so that optimizer temporaries stay block-sized
(the trainable item / user raw feature tables of REARM's eq. 3)."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["RawTable"]


def _row_block(values: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of a contiguous 2-D tensor, on the same storage (no copy) but with its
    own version counter. Slices made by indexing share one counter, so an in-place update of one
    block (the optimizer's step, the decoupled decay) would look to autograd like a change of
    every other block, e.g. of one still saved by a graph kept for a second backward."""
    block = values.new_empty(0)
    width = values.shape[1]
    block.set_(values.untyped_storage(), values.storage_offset() + start * width, (stop - start, width), (width, 1))
    return block


class RawTable(nn.Module):
    """A table of raw modal vectors (rows, d_m), trainable (official: ``Embedding.from_pretrained(
    freeze=False)`` for items, ``nn.Parameter`` for users) or a frozen buffer.

    A trainable table is held as row blocks of at most :attr:`BLOCK_ELEMENTS` entries, each its own
    parameter: an optimizer's per-parameter temporaries (Adam's ``sqrt(v) / c + eps``) are then
    block-sized instead of table-sized (on Baby the user image table is 318 MB). The blocks never
    appear outside: ``project`` applies a linear layer block by block, and the state_dict holds one
    ``weight`` (rows, d_m) either way, so checkpoints do not depend on the switch or the blocking.
    """

    BLOCK_ELEMENTS = 1 << 23  # 32 MB of float32

    def __init__(self, values: torch.Tensor, trainable: bool):
        super().__init__()
        # No copy: like MMRec's models (Embedding.from_pretrained) the table shares storage with
        # the host's feature tensor, which nothing else reads after construction.
        values = values.detach().float().contiguous()
        self.shape = tuple(values.shape)
        self.trainable = trainable
        if trainable:
            rows = max(1, self.BLOCK_ELEMENTS // max(1, values.shape[1]))
            self.block_names = []
            for index, start in enumerate(range(0, values.shape[0], rows)):
                part = _row_block(values, start, min(values.shape[0], start + rows))
                self.register_parameter(f"block{index}", nn.Parameter(part))
                self.block_names.append(f"block{index}")
        else:
            self.register_buffer("weight_buffer", values)

    @property
    def blocks(self) -> list:
        return [getattr(self, name) for name in self.block_names]

    @property
    def weight(self) -> torch.Tensor:
        """The whole table (rows, d_m); a concatenated copy when trainable."""
        if not self.trainable:
            return self.weight_buffer
        blocks = self.blocks
        return torch.cat(blocks) if len(blocks) > 1 else blocks[0]

    def project(self, linear: nn.Module) -> torch.Tensor:
        """``linear`` applied to every row -> (rows, d_out), block by block (no table-sized copy)."""
        if not self.trainable:
            return linear(self.weight_buffer)
        parts = [linear(block) for block in self.blocks]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    # state_dict: one "weight" entry instead of the blocks / the buffer (no child modules here,
    # so these two hooks see every entry of this table)
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight if keep_vars else self.weight.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "weight"
        if strict:
            unexpected_keys.extend(name for name in state_dict if name.startswith(prefix) and name != key)
        if key not in state_dict:
            missing_keys.append(key)
            return
        value = state_dict[key]
        if tuple(value.shape) != self.shape:
            error_msgs.append(f"size mismatch for {key}: copying a param with shape "
                              f"{tuple(value.shape)}, the shape in current model is {self.shape}.")
            return
        with torch.no_grad():
            if not self.trainable:
                self.weight_buffer.copy_(value)
            else:
                start = 0
                for block in self.blocks:
                    block.copy_(value[start:start + block.shape[0]])
                    start += block.shape[0]

    def extra_repr(self) -> str:
        blocks = f", blocks={len(self.blocks)}" if self.trainable else ""
        return f"{self.shape}, trainable={self.trainable}{blocks}"
