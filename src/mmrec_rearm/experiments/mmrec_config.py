"""Read an MMRec checkout's configuration the way MMRec itself does, without importing MMRec.

MMRec (``src/utils/configurator.py``) merges ``configs/overall.yaml``, ``configs/dataset/<D>.yaml``
and ``configs/model/<M>.yaml`` in that order (later files win), concatenates their
``hyper_parameters`` lists, and parses YAML with an extra float rule so that ``1e-04`` is a float
(plain YAML 1.1 reads it as a string). Its grid search (``utils/quick_start.py``) then runs the
Cartesian product of the values of every ``hyper_parameters`` key, ``seed`` first.

Everything here is read-only on the checkout and needs only PyYAML.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Union

import yaml

from ..errors import ConfigError
from ..mmrec_yaml import load_mmrec_yaml
from ..hints import command

PathLike = Union[str, "os.PathLike[str]"]


def parse_yaml_text(text: str, where: str = "<text>") -> Any:
    """Parse YAML with MMRec's number rules; ``where`` names the source in error messages."""
    try:
        return load_mmrec_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc}); fix the syntax.") from exc


def load_yaml_file(path: PathLike) -> dict:
    """One MMRec YAML file as a dict (an empty file gives ``{}``)."""
    path = Path(path)
    data = parse_yaml_text(path.read_text(encoding="utf-8"), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}.")
    return data


def mmrec_src(mmrec_dir: PathLike) -> Path:
    """The ``src`` folder of an MMRec checkout (accepts the checkout or its ``src``)."""
    root = Path(mmrec_dir).expanduser().resolve()
    for candidate in (root / "src", root):
        if (candidate / "utils" / "quick_start.py").is_file() and (candidate / "configs" / "overall.yaml").is_file():
            return candidate
    raise ConfigError(
        f"{root}: not an MMRec checkout (no src/utils/quick_start.py and src/configs/overall.yaml); "
        "pass the folder you cloned https://github.com/enoche/MMRec into."
    )


def available_models(src: Path) -> List[str]:
    """Model names MMRec can load: class names taken from ``configs/model/*.yaml`` whose
    ``models/<name lower>.py`` exists (MMRec imports ``models.<name.lower()>`` then the class)."""
    names = []
    for yml in sorted((src / "configs" / "model").glob("*.yaml")):
        if (src / "models" / f"{yml.stem.lower()}.py").is_file():
            names.append(yml.stem)
    return names


def check_model(src: Path, model: str) -> None:
    """Raise :class:`ConfigError` unless MMRec can import ``model`` from this checkout."""
    if not (src / "models" / f"{model.lower()}.py").is_file():
        from ..install import MODEL_SHIMS

        hint = ""
        ours = {name.upper(): name for name in MODEL_SHIMS}
        if model.upper() in ours:
            hint = (f" {ours[model.upper()]} is not installed into this checkout yet: run "
                    f"`{command('install', '--mmrec', src.parent)}`.")
        known = ", ".join(available_models(src))
        raise ConfigError(
            f"{src / 'models' / (model.lower() + '.py')}: model '{model}' not found in this MMRec checkout "
            f"(names are case-sensitive).{hint} Available: {known}."
        )


def merged_config(src: Path, model: str, dataset: str) -> dict:
    """The settings MMRec would see for (model, dataset) before any config_dict override.

    ``hyper_parameters`` is the concatenation over the three files, as in MMRec's Config.
    """
    merged: Dict[str, Any] = {}
    hyper: List[str] = []
    for path in (src / "configs" / "overall.yaml",
                 src / "configs" / "dataset" / f"{dataset}.yaml",
                 src / "configs" / "model" / f"{model}.yaml"):
        if path.is_file():
            data = load_yaml_file(path)
            if data.get("hyper_parameters"):
                hyper.extend(data["hyper_parameters"])
            merged.update(data)
    merged["hyper_parameters"] = hyper
    return merged


def grid_keys(config: dict) -> List[str]:
    """The searched keys in MMRec's order, without ``seed`` (we run seeds ourselves) and duplicates."""
    keys: List[str] = []
    for key in config.get("hyper_parameters") or []:
        if key != "seed" and key not in keys:
            keys.append(key)
    return keys


def grid_values(config: dict, key: str) -> list:
    """Candidate values of one grid key; MMRec uses ``config[key] or [None]``, a scalar is one value."""
    value = config.get(key)
    if isinstance(value, (list, tuple)):
        return list(value) or [None]
    return [None] if value is None else [value]


def dataset_folder(src: Path, config: dict, dataset: str) -> Path:
    """Where MMRec looks for the dataset: ``abspath(data_path + dataset)`` relative to ``src``
    (a plain string concatenation in MMRec, so ``data_path`` must end with a slash)."""
    data_path = str(config.get("data_path") or "../data/")
    path = Path(data_path + dataset)
    return path if path.is_absolute() else (src / path).resolve()


def dataset_yaml_path(src: Path, dataset: str) -> Path:
    return src / "configs" / "dataset" / f"{dataset}.yaml"


def uses_user_graph(src: Path, model: str) -> bool:
    """Whether the model's source reads ``user_graph_dict_file`` (DRAGON, DualGNN in MMRec e775373)."""
    path = src / "models" / f"{model.lower()}.py"
    try:
        return "user_graph_dict_file" in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
