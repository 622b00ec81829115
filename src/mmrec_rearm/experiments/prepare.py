"""Getting a checkout and a dataset ready for runs, shared by every command that trains.

``run``, ``compare``, ``ablate``, ``sensitivity`` (and anything else that launches runs) call these
before the first run starts, in the user's working directory: user-given paths are made absolute
there (:func:`user_path`; the runs themselves start in MMRec's ``src/``), a dataset folder outside
the checkout is staged (:func:`stage_dataset`), a missing dataset YAML is written, DRAGON/DualGNN's
user graph file is built, a multimodal model on a folder without features stops with the place
real features come from (:func:`check_features`), the results folder is checked writable
(:func:`prepared_store`), and ``--device`` becomes MMRec's settings (:func:`device_settings`, the one
parser of device names; :mod:`.parallel` uses it for ``--devices``).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

from ..atomic import check_writable
from ..errors import ConfigError, DatasetError
from ..modalities import check_feature_files, require_features
from .datasets import detect_feature_files, write_dataset_yaml
from .mmrec_config import dataset_folder, dataset_yaml_path, merged_config, uses_user_graph
from .store import RunStore
from .user_graph import make_user_graph_dict

PathLike = Union[str, "os.PathLike[str]"]
Progress = Callable[[str], None]

__all__ = ["user_path", "stage_dataset", "ensure_dataset", "prepare_user_graph", "check_features",
           "device_settings", "git_commit", "check_python", "prepared_store"]


def user_path(path: PathLike) -> Path:
    """``path`` made absolute against the current working directory (the user's, not MMRec's
    ``src/`` where the runs start); ``~`` is expanded and symbolic links are kept as given."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def check_python(python: str) -> None:
    """ConfigError unless ``python`` names an interpreter (on PATH or as a file)."""
    if shutil.which(python) is None and not Path(python).is_file():
        raise ConfigError(f"python={python!r}: interpreter not found; give the Python that has MMRec's requirements.")


def prepared_store(results_dir: Path, dataset: str, progress: Optional[Progress]) -> RunStore:
    """The results store of ``dataset``, its folder checked writable before any run starts (a run
    whose record cannot be written would be lost). Unusable records are reported through
    ``progress`` as ``warning: ...`` lines (``warnings.warn`` when None)."""
    check_writable(results_dir / dataset, what="run records and tables")
    report = (lambda line: progress(f"warning: {line}")) if progress else None
    return RunStore(results_dir, dataset, report=report)


def git_commit(folder: Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def stage_dataset(data_dir: Path, staging_root: Path, dataset: str) -> Path:
    """``<staging_root>/<dataset>/`` with a symbolic link to every entry of ``data_dir``.

    MMRec models write caches (``mm_adj_*.pt``) and DRAGON needs ``user_graph_dict.npy`` in the
    dataset folder; staging keeps those out of a shared or read-only data folder. Hidden entries
    (``.rearm_cache`` of an earlier direct run, ``.mmrec-rearm``) are not linked: a link would send
    the writes of the staged runs back into the source folder.
    """
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: dataset folder not found; pass the folder holding the .inter file.")
    staged = staging_root / dataset
    staged.mkdir(parents=True, exist_ok=True)
    for entry in sorted(data_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        link = staged / entry.name
        if link.is_symlink() and os.path.realpath(link) == str(entry.resolve()):
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            continue  # a folder of the same name made earlier: leave it alone
        try:
            link.symlink_to(entry.resolve())
        except OSError:  # file systems without symbolic links
            if entry.is_file():
                shutil.copy2(entry, link)
    return staged


def ensure_dataset(src: Path, dataset: str, data_dir: Optional[Path], results_root: Path,
                    write_yaml: bool, progress: Progress) -> tuple:
    """(dataset folder as MMRec will see it, extra unhashed config for every run)."""
    extra: Dict[str, Any] = {}
    if data_dir is not None:
        staged = stage_dataset(data_dir, results_root / "data", dataset)
        extra["data_path"] = str(staged.parent) + os.sep
    base = merged_config(src, "__none__", dataset)
    folder = dataset_folder(src, {"data_path": extra.get("data_path") or base.get("data_path")}, dataset)
    if not dataset_yaml_path(src, dataset).is_file():
        if not folder.is_dir():
            raise DatasetError(f"{folder}: dataset folder not found and MMRec has no "
                               f"{dataset_yaml_path(src, dataset)}; pass data_dir= (--data-dir) or put the "
                               "data where MMRec's data_path points.")
        if write_yaml:
            vision, text, note = detect_feature_files(folder)
            path = write_dataset_yaml(src, dataset, vision_feature_file=vision, text_feature_file=text, note=note)
            progress(f"wrote {path} (marked as ours){': ' + note if note else ''}")
    return folder, extra


def prepare_user_graph(src: Path, folder: Path, dataset: str, models: Sequence[str], k: int,
                        progress: Progress) -> Dict[str, Any]:
    """Build the user graph file DRAGON/DualGNN read, if missing -> extra config for every run.

    MMRec's own dataset YAMLs name the file (``user_graph_dict_file``); a YAML without the key
    makes those models fail on ``os.path.join(..., None)``, so the key is then passed to the runs."""
    needing = [m for m in models if uses_user_graph(src, m)]
    if not needing:
        return {}
    config = merged_config(src, needing[0], dataset)
    extra: Dict[str, Any] = {}
    name = config.get("user_graph_dict_file")
    if not name:
        name = "user_graph_dict.npy"
        extra["user_graph_dict_file"] = name
        progress(f"{dataset_yaml_path(src, dataset)} has no user_graph_dict_file, which "
                 f"{', '.join(needing)} read; passing user_graph_dict_file={name} to the runs")
    name = str(name)
    target = folder / name
    if target.exists():
        return extra
    if not os.access(folder, os.W_OK):
        raise DatasetError(f"{folder}: {', '.join(needing)} need {name} here but the folder is read-only; "
                           "pass data_dir= (--data-dir) to work on a staged copy.")
    started = time.time()
    make_user_graph_dict(folder, k=k, inter_file=str(config.get("inter_file_name") or f"{dataset}.inter"),
                         file_name=name)
    progress(f"built {target} for {', '.join(needing)} in {time.time() - started:.1f} s")
    return extra


def check_features(src: Path, dataset: str, folder: Path, model: str, config: Dict[str, Any]) -> None:
    """DatasetError naming MMRec's source of real features when ``model`` is multimodal (MMRec's
    ``is_multimodal_model``, not ``end2end``) and ``folder`` holds none of its feature files; for
    REARM, every feature file its ``modalities`` selects must exist and be a plain ``.npy`` (the
    check its constructor makes, :func:`mmrec_rearm.modalities.check_feature_files`, done before the
    first run starts).

    ``config``: the run's own settings (they win over the YAML files, as in MMRec)."""
    settings = {**merged_config(src, model, dataset), **dict(config)}
    if not settings.get("is_multimodal_model") or settings.get("end2end"):  # absent: False, as in MMRec
        return
    if model == "REARM":
        modalities = settings.get("modalities") or "all"
        if modalities in ("all", "first", "second") or (
                isinstance(modalities, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in modalities)):
            check_feature_files(settings.get, folder, modalities, dataset=dataset, checkout=src.parent)
        return  # any other value: the model's own settings check names it
    require_features(settings.get, folder, dataset, checkout=src.parent)


_DEVICE = re.compile(r"^(cpu|cuda(?::(\d+))?)$")


def device_settings(device: Optional[str]) -> Dict[str, Any]:
    """``--device`` as MMRec settings: ``cpu`` -> ``use_gpu: False``; ``cuda`` / ``cuda:K`` ->
    ``use_gpu: True, gpu_id: K`` (MMRec then sets ``CUDA_VISIBLE_DEVICES=K``); None -> MMRec's own
    (``use_gpu: True, gpu_id: 0``: the first GPU when there is one, else the CPU)."""
    if device is None:
        return {}
    found = _DEVICE.match(device.strip().lower())
    if not found:
        raise ConfigError(f"--device {device!r}: expected cpu, cuda or cuda:K (K = the GPU's index).")
    if found.group(1) == "cpu":
        return {"use_gpu": False}
    return {"use_gpu": True, "gpu_id": int(found.group(2) or 0)}
