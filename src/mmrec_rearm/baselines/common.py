"""What every baseline plug-in reads from its MMRec host: validated settings, the modal item
features of MMRec's two feature slots and the training interaction matrix.

A baseline's settings are plain keys of its configs/model/<Model>.yaml; :class:`Settings` reads
one key at a time with its default, checks type and range, and raises a :class:`ConfigError`
that names the model, the key, the value and the fix. Dataset-dependent defaults (a preset per
dataset, as the authors' README gives them) go through :func:`mmrec_rearm.model.presets.resolve`,
the rule REARM uses: config value, else the dataset YAML, else the dataset's preset.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp
import torch

from ..data import training_matrix
from ..errors import ConfigError, DatasetError
from ..host import config_value
from ..model.presets import ResolvedSettings, describe, resolve

__all__ = ["Settings", "modal_features", "training_interactions", "parameter_versions"]

logger = logging.getLogger(__name__)


class Settings:
    """Typed access to one model's configuration keys (MMRec ``Config`` or a mapping).

    ``official_names``: the authors' flag -> our key; a value given under the authors' name is
    refused with the name to use (so it is never silently ignored). ``presets``: preset name ->
    {key: value} for the dataset-dependent keys, ``fallback`` the preset of an unknown dataset.
    """

    def __init__(self, model: str, config: Any, *, official_names: Optional[Mapping[str, str]] = None,
                 presets: Optional[Mapping[str, Mapping[str, Any]]] = None, fallback: Optional[str] = None):
        self.model = model
        self.config = config
        for flag, ours in (official_names or {}).items():
            if flag != ours and self.raw(flag) is not None:
                raise ConfigError(f"{model} config key '{flag}' is the authors' flag name; this model reads "
                                  f"'{ours}' instead. Rename the key (value {self.raw(flag)!r}).")
        self.dataset = str(self.raw("dataset") or "")
        self.resolved: Optional[ResolvedSettings] = None
        if presets:
            self.resolved = resolve(self.raw, self.dataset, presets=presets, fallback=fallback, model=model)

    def raw(self, key: str) -> Any:
        """The configured value of ``key`` or None."""
        return config_value(self.config, key, None)

    def describe_presets(self) -> str:
        return describe(self.resolved, self.dataset, self.model) if self.resolved else f"{self.model}: no presets"

    def _value(self, key: str, default: Any) -> Any:
        if self.resolved is not None and key in self.resolved.values:
            value = self.resolved.values[key]
        else:
            value = self.raw(key)
            value = default if value is None else value
        return value

    def _scalar(self, key: str, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            raise ConfigError(
                f"{self.model} config key '{key}' has the list value {list(value)}; a model gets one "
                f"value per run. To grid-search it, list '{key}' in hyper_parameters (MMRec then passes "
                "each value in turn); otherwise give a single value.")
        return value

    def number(self, key: str, default: Any, kind: type = float, low: float = float("-inf"),
               high: float = float("inf"), low_open: bool = False) -> Any:
        """An int or float within ``[low, high]`` (``(low, high]`` with ``low_open``)."""
        value = self._scalar(key, self._value(key, default))
        if isinstance(value, str):  # MMRec's YAML loader leaves some exponent forms as strings
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.model} config key '{key}' must be a number, got {value!r}.")
        if kind is int:
            if float(value) != int(value):
                raise ConfigError(f"{self.model} config key '{key}' must be an integer, got {value!r}.")
            value = int(value)
        else:
            value = float(value)
        if (value <= low if low_open else value < low) or value > high:
            raise ConfigError(f"{self.model} config key '{key}' must lie in "
                              f"{'(' if low_open else '['}{low}, {high}], got {value!r}.")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._scalar(key, self._value(key, default))
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{self.model} config key '{key}' must be true or false, got {value!r}.")

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self._scalar(key, self._value(key, default))
        if not isinstance(value, str) or value.lower() not in choices:
            raise ConfigError(f"{self.model} config key '{key}' must be one of {', '.join(choices)}; "
                              f"got {value!r}.")
        return value.lower()

    def int_list(self, key: str, default: Sequence[int], low: int = 1, allow_empty: bool = False) -> Tuple[int, ...]:
        """A list of integers >= ``low`` (MMRec passes YAML lists through unchanged)."""
        value = self._value(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if (not isinstance(value, (list, tuple)) or (not value and not allow_empty)
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value)):
            raise ConfigError(f"{self.model} config key '{key}' must be a list of integers >= {low}, "
                              f"got {value!r}.")
        return tuple(int(v) for v in value)

    def optional_path(self, key: str) -> Any:
        """A folder, ``False`` (no cache) or None (default location)."""
        value = self.raw(key)
        if not (value is None or value is False or isinstance(value, str)):
            raise ConfigError(f"{self.model} config key '{key}' must be a folder, false or ~, got {value!r}.")
        return value


def modal_features(model: Any, config: Any, name: str) -> Tuple[List[str], List[torch.Tensor]]:
    """The item features of MMRec's vision and text slots that exist, in that order -> (names,
    (n_items, d_m) float tensors). Names are the file stems (``image_feat``, ``audio_feat`` on
    TikTok, where configs/dataset/tiktok.yaml puts audio into the text slot)."""
    names: List[str] = []
    feats: List[torch.Tensor] = []
    for slot, key in ((getattr(model, "v_feat", None), "vision_feature_file"),
                      (getattr(model, "t_feat", None), "text_feature_file")):
        if slot is None:
            continue
        if slot.dim() != 2 or slot.shape[0] != model.n_items:
            raise DatasetError(f"{name}: feature file {config_value(config, key)!r} has shape "
                               f"{tuple(slot.shape)}, expected (n_items={model.n_items}, d).")
        names.append(Path(str(config_value(config, key, key))).stem)
        feats.append(slot.float())
    if not feats:
        raise DatasetError(
            f"{name} needs item features, but neither vision_feature_file="
            f"{config_value(config, 'vision_feature_file')!r} nor text_feature_file="
            f"{config_value(config, 'text_feature_file')!r} was found in the dataset folder.")
    if len(set(names)) != len(names):
        names = [f"{n}{i}" for i, n in enumerate(names)]
    return names, feats


def training_interactions(dataloader: Any, n_users: int, n_items: int) -> sp.csr_matrix:
    """The training matrix ``(n_users, n_items)`` float32 0/1 (duplicates merged) from the host's
    ``dataloader.inter_matrix(form='coo')``."""
    coo = dataloader.inter_matrix(form="coo")
    matrix = training_matrix(np.asarray(coo.row), np.asarray(coo.col), n_users, n_items)
    if matrix.shape != (n_users, n_items):
        raise DatasetError(f"interaction matrix has shape {matrix.shape}, expected "
                           f"(n_users={n_users}, n_items={n_items})")
    return matrix


def parameter_versions(module: torch.nn.Module) -> Tuple[int, ...]:
    """Version counters of every parameter and buffer: they change on any in-place update
    (optimizer steps, ``load_state_dict``), so an evaluation cache keyed by them is never stale."""
    return tuple(t._version for t in list(module.parameters()) + list(module.buffers()))
