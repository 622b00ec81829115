"""The thin adapter between REARM and its host, the MMRec toolbox.

* :data:`BaseRecommender` is MMRec's ``common.abstract_recommender.GeneralRecommender`` when that
  module can be imported (MMRec runs with its ``src/`` folder as working directory and first entry
  of ``sys.path``; the installed shim ``src/models/rearm.py`` imports our model from there), else
  :class:`StandInRecommender`, a small class with the same constructor contract so that the model
  can be built and tested without MMRec. The choice is made once, when this module is first
  imported.
* :func:`config_value` reads a key from MMRec's ``Config`` (``config[key]`` is None when absent)
  or from a plain mapping.
* :class:`CachedScoring` gives a model whose ``forward()`` returns all users' and all items'
  representations MMRec's ``full_sort_predict`` / ``predict``, computing them once per evaluation pass.
* :class:`ArrayDataLoader` is the part of MMRec's training data loader the model reads
  (``dataset.get_user_num()``, ``dataset.get_item_num()``, ``inter_matrix(form)``), built from
  arrays, for tests, benchmarks and hosts other than MMRec.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional, Tuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn

__all__ = ["BaseRecommender", "StandInRecommender", "USING_MMREC", "config_value",
           "CachedScoring", "ArrayDataLoader", "dataset_folder"]

logger = logging.getLogger(__name__)


def config_value(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]``, or ``default`` when the key is absent or None.

    Works for MMRec's ``Config`` (whose ``[]`` returns None for a missing key) and for mappings.
    """
    try:
        value = config[key]
    except (KeyError, TypeError):
        return default
    return default if value is None else value


def dataset_folder(config: Any) -> str:
    """The dataset folder exactly as MMRec computes it: ``abspath(data_path + dataset)``."""
    return os.path.abspath(str(config_value(config, "data_path", "")) + str(config_value(config, "dataset", "")))


class StandInRecommender(nn.Module):
    """Stand-in for MMRec's ``GeneralRecommender`` when MMRec is not importable.

    Same contract: ``__init__(config, dataloader)`` sets ``USER_ID``, ``ITEM_ID``, ``NEG_ITEM_ID``
    (field names), ``n_users = dataloader.dataset.get_user_num()``, ``n_items =
    dataloader.dataset.get_item_num()``, ``batch_size = config['train_batch_size']``, ``device =
    config['device']`` and the two feature slots ``v_feat`` / ``t_feat``: float32 tensors on
    ``device`` loaded from ``<data_path><dataset>/<vision_feature_file>`` and
    ``.../<text_feature_file>`` when those files exist (unless ``end2end`` is true or
    ``is_multimodal_model`` is false), else None. Differences from MMRec, on purpose: missing
    config keys get MMRec's defaults (``userID``, ``itemID``, ``neg__``, cpu), ``.npy`` files are
    loaded with ``allow_pickle=False``, and no assertion fires when both slots are empty (the model
    reports that itself with a clear error).
    """

    def __init__(self, config: Any, dataloader: Any):
        super().__init__()
        self.USER_ID = config_value(config, "USER_ID_FIELD", "userID")
        self.ITEM_ID = config_value(config, "ITEM_ID_FIELD", "itemID")
        self.NEG_ITEM_ID = config_value(config, "NEG_PREFIX", "neg__") + self.ITEM_ID
        self.n_users = int(dataloader.dataset.get_user_num())
        self.n_items = int(dataloader.dataset.get_item_num())
        self.batch_size = config_value(config, "train_batch_size", 2048)
        self.device = torch.device(config_value(config, "device", "cpu"))
        self.v_feat: Optional[torch.Tensor] = None
        self.t_feat: Optional[torch.Tensor] = None
        if not config_value(config, "end2end", False) and config_value(config, "is_multimodal_model", True):
            folder = dataset_folder(config)
            self.v_feat = self._load(folder, config_value(config, "vision_feature_file"))
            self.t_feat = self._load(folder, config_value(config, "text_feature_file"))

    def _load(self, folder: str, name: Optional[str]) -> Optional[torch.Tensor]:
        if not name:
            return None
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return None
        return torch.from_numpy(np.load(path, allow_pickle=False)).float().to(self.device)

    # The rest of MMRec's AbstractRecommender interface.
    def pre_epoch_processing(self):
        pass

    def post_epoch_processing(self):
        pass

    def calculate_loss(self, interaction):
        raise NotImplementedError

    def predict(self, interaction):
        raise NotImplementedError

    def full_sort_predict(self, interaction):
        raise NotImplementedError

    def __str__(self) -> str:
        params = sum(int(np.prod(p.size())) for p in self.parameters())
        return super().__str__() + f"\nTrainable parameters: {params}"


def _find_base():
    try:
        from common.abstract_recommender import GeneralRecommender  # MMRec, cwd = MMRec/src
    except Exception:  # noqa: BLE001 - any failure means: not running inside MMRec
        return StandInRecommender, False
    if not (isinstance(GeneralRecommender, type) and issubclass(GeneralRecommender, nn.Module)):
        return StandInRecommender, False
    return GeneralRecommender, True


#: MMRec's GeneralRecommender, or the stand-in; USING_MMREC says which.
BaseRecommender, USING_MMREC = _find_base()


class CachedScoring:
    """Mixin for an ``nn.Module`` recommender whose ``forward()`` returns all users' and all items'
    final representations ``(n_users, D)``, ``(n_items, D)`` and whose scores are dot products.

    In eval mode the representations are computed once and reused, batch after batch, until a
    parameter or buffer changes (in-place updates such as optimiser steps or ``load_state_dict``
    bump their version counters), training resumes (``train(True)``) or the model drops
    ``_eval_cache`` itself (e.g. when computing a loss): MMRec evaluates valid and test back to back,
    each starting with ``eval()``, so both share one forward.
    """

    _eval_cache: Optional[Tuple[Tuple[int, ...], torch.Tensor, torch.Tensor]] = None

    def train(self, mode: bool = True):
        if mode:
            self._eval_cache = None
        return super().train(mode)

    def _state_version(self) -> Tuple[int, ...]:
        return tuple(t._version for t in list(self.parameters()) + list(self.buffers()))

    def representations(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``forward()`` without gradients; cached in eval mode (see the class docstring)."""
        if self.training:
            with torch.no_grad():
                return self.forward()
        version = self._state_version()
        if self._eval_cache is None or self._eval_cache[0] != version:
            with torch.no_grad():
                users, items = self.forward()
            self._eval_cache = (version, users, items)
        return self._eval_cache[1], self._eval_cache[2]

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """Scores of the batch users (``interaction[0]``, (b,)) against all items -> (b, n_items)."""
        users, items = self.representations()
        return users[interaction[0]] @ items.t()

    def predict(self, interaction) -> torch.Tensor:
        """Scores of (user, item) pairs: ``interaction[0]``, ``interaction[1]`` (b,) -> (b,)."""
        users, items = self.representations()
        return (users[interaction[0]] * items[interaction[1]]).sum(-1)


class _ArrayDataset:
    def __init__(self, n_users: int, n_items: int):
        self._n_users, self._n_items = n_users, n_items

    def get_user_num(self) -> int:
        return self._n_users

    def get_item_num(self) -> int:
        return self._n_items


class ArrayDataLoader:
    """What the model reads from MMRec's ``TrainDataLoader``, built from training pairs.

    ``users``, ``items``: (n,) integer ids of the TRAINING interactions; ``n_users`` / ``n_items``
    default to max id + 1 (MMRec's convention, over the ids given).
    """

    def __init__(self, users, items, n_users: Optional[int] = None, n_items: Optional[int] = None):
        self.users = np.asarray(users, dtype=np.int64)
        self.items = np.asarray(items, dtype=np.int64)
        n_users = int(self.users.max()) + 1 if n_users is None else int(n_users)
        n_items = int(self.items.max()) + 1 if n_items is None else int(n_items)
        self.dataset = _ArrayDataset(n_users, n_items)

    def inter_matrix(self, form: str = "coo"):
        """(n_users, n_items) float32 ones, like MMRec (duplicates are not merged)."""
        shape = (self.dataset.get_user_num(), self.dataset.get_item_num())
        mat = sp.coo_matrix((np.ones(len(self.users), dtype=np.float32), (self.users, self.items)),
                            shape=shape)
        if form == "coo":
            return mat
        if form == "csr":
            return mat.tocsr()
        raise NotImplementedError(f"sparse matrix format '{form}' is not implemented")
