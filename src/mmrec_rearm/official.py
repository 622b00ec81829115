"""Load a state_dict saved from the official REARM code (github MrShouxingMa/REARM) into our model.

The official module is a single ``nn.Module`` whose parameter names differ from ours. The table
below (:func:`official_key_map`) is the complete correspondence for the official two-modality
model (image = our modality 0, text = our modality 1) with our default ``attention: scalar``.
The official key strings appear here only, spelled as the official code spells them, so that a
search for an official name finds its counterpart; our own code keeps its own names.

==================================================  ==============================================
official key                                        ours
==================================================  ==============================================
user_id_embedding.weight                            user_id.weight
item_id_embedding.weight                            item_id.weight
image_embedding.weight, text_embedding.weight       item_raw.0.weight, item_raw.1.weight
user_v_prefer, user_t_prefer                        user_raw.0.weight, user_raw.1.weight
image_i_trs.*, text_i_trs.*                         item_proj.0.*, item_proj.1.*
image_u_trs.*, text_u_trs.*                         user_proj.0.*, user_proj.1.*
self_i_attn{1,2}.in_proj_weight                     self_attn.{0,1}.qkv_weight
self_i_attn{1,2}.in_proj_bias                       self_attn.{0,1}.qkv_bias
self_i_attn{1,2}.out_proj.weight, .out_proj.bias    self_attn.{0,1}.out_weight, .out_bias
mutual_i_attn{1,2}.* (same four names)              cross_attn.{0,1}.*
ly_norm.weight, ly_norm.bias                        norm.weight, norm.bias
prl.weight                                          act.weight
meta_netu.*, meta_neti.*                            user_meta.compress.*, item_meta.compress.*
mlp_u1.linear_pre.*, .prl.weight, .linear_out.*     user_meta.first.hidden.*, .act.weight, .out.*
mlp_u2.*, mlp_i1.*, mlp_i2.*                        user_meta.second.*, item_meta.first.*, item_meta.second.*
==================================================  ==============================================

Index 1 of the official attention modules is the image side, 2 the text side; the official
cross-attention module 1 produces the image output with the text features as the query.
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch

from .errors import CheckpointError

__all__ = ["official_key_map", "load_official_state_dict", "to_official_state_dict"]

def official_key_map() -> Dict[str, str]:
    """Official state_dict key -> our state_dict key (two modalities, scalar attention)."""
    table: Dict[str, str] = {
        "user_id_embedding.weight": "user_id.weight",
        "item_id_embedding.weight": "item_id.weight",
        "ly_norm.weight": "norm.weight",
        "ly_norm.bias": "norm.bias",
        "prl.weight": "act.weight",
    }
    for m, (modal, letter) in enumerate((("image", "v"), ("text", "t"))):
        table[f"{modal}_embedding.weight"] = f"item_raw.{m}.weight"
        table[f"user_{letter}_prefer"] = f"user_raw.{m}.weight"
        for part in ("weight", "bias"):
            table[f"{modal}_i_trs.{part}"] = f"item_proj.{m}.{part}"
            table[f"{modal}_u_trs.{part}"] = f"user_proj.{m}.{part}"
        for official, ours in (("self_i_attn", "self_attn"), ("mutual_i_attn", "cross_attn")):
            prefix = f"{official}{m + 1}"
            table[f"{prefix}.in_proj_weight"] = f"{ours}.{m}.qkv_weight"
            table[f"{prefix}.in_proj_bias"] = f"{ours}.{m}.qkv_bias"
            table[f"{prefix}.out_proj.weight"] = f"{ours}.{m}.out_weight"
            table[f"{prefix}.out_proj.bias"] = f"{ours}.{m}.out_bias"
    for side, letter in (("user", "u"), ("item", "i")):
        for part in ("weight", "bias"):
            table[f"meta_net{letter}.{part}"] = f"{side}_meta.compress.{part}"
        for index, generator in ((1, "first"), (2, "second")):
            prefix = f"mlp_{letter}{index}"
            table[f"{prefix}.prl.weight"] = f"{side}_meta.{generator}.act.weight"
            for part in ("weight", "bias"):
                table[f"{prefix}.linear_pre.{part}"] = f"{side}_meta.{generator}.hidden.{part}"
                table[f"{prefix}.linear_out.{part}"] = f"{side}_meta.{generator}.out.{part}"
    return table


def _check(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
           table: Mapping[str, str]) -> Dict[str, torch.Tensor]:
    """``state_dict`` (official names) translated to ours, or CheckpointError listing every problem."""
    out: Dict[str, torch.Tensor] = {}
    unexpected, wrong_shape = [], []
    for key, value in state_dict.items():
        target = table.get(key)
        if target is None or target not in expected:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(expected[target].shape):
            wrong_shape.append(f"{key} {tuple(value.shape)} vs {target} {tuple(expected[target].shape)}")
        else:
            out[target] = value
    missing = [key for key, target in table.items() if target in expected and key not in state_dict]
    uncovered = [key for key in expected if key not in set(table.values())]
    if missing or unexpected or wrong_shape or uncovered:
        lines = ["the state_dict does not fit this REARM model (the official layout has two "
                 "modalities, image then text, and needs attention: scalar)."]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", wrong_shape),
                             ("model keys without an official counterpart", uncovered)):
            if items:
                lines.append(f"{label} ({len(items)}): {', '.join(sorted(items))}")
        raise CheckpointError("\n".join(lines))
    return out


def load_official_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy an official REARM state_dict into ``model`` (our REARM, two modalities, scalar attention).

    Every official key must map onto one of ours and every one of ours must be covered; shapes
    must agree. Otherwise :class:`CheckpointError` lists the missing official keys, the
    unexpected keys, the shape mismatches and our keys without an official counterpart, and
    ``model`` is left unchanged.
    """
    translated = _check(state_dict, model.state_dict(), official_key_map())
    model.load_state_dict(translated, strict=True)


def to_official_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Our model's state_dict under the official key names (the inverse of the loader)."""
    inverse = {ours: official for official, ours in official_key_map().items()}
    state = model.state_dict()
    unknown = [key for key in state if key not in inverse]
    if unknown:
        raise CheckpointError(f"these keys have no official counterpart (more than two modalities "
                              f"or attention: matrix?): {', '.join(unknown)}")
    return {inverse[key]: value for key, value in state.items()}
