"""Finding the authors' code (REARM's official code and the five baselines') and importing it at
run time, in isolation, for the parity tests.

Nothing of the authors' code is copied into this repository: each parity test finds a clone
(:func:`require_clone`: an environment variable, else default places), imports the modules it needs
(:func:`import_from_clone`) with the clone first on ``sys.path``, no bytecode written into it, and
an empty command line for their module-level ``argparse``; afterwards every module it loaded is
taken out of ``sys.modules`` again and what was there restored (the clones use generic top-level
names such as ``utils``, ``Model`` or ``main`` that MMRec or another clone also uses).

Their code targets older Python / torch versions and a GPU. :func:`authors_runtime`, around the
import and every call into their code, makes ``.cuda()`` the identity and puts
``tests/official_shims`` last on ``sys.path``: plain-torch stand-ins for exactly the calls their
code makes into packages this environment lacks (``dgl``, ``torch_scatter``, ``setproctitle``; see
docs/testing.md). A real installed package always wins over its stand-in.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIMS = Path(__file__).resolve().parent / "official_shims"
SHIMMED = ("dgl", "torch_scatter", "setproctitle")


def default_places(*names: str) -> List[Path]:
    """Where a clone is looked for when its variable is unset: ``~/<name>``, then
    ``ext/<name>`` beside the repository or one level up (a git worktree of it)."""
    home = [Path("~", name).expanduser() for name in names]
    ext = [root / "ext" / name for root in (REPO_ROOT.parent, REPO_ROOT.parents[1]) for name in names]
    return home + ext


def find_clone(env: str, defaults: Sequence[Path], required: Sequence[str], howto: str) -> Tuple[Optional[Path], str]:
    """(clone folder, "") or (None, why not and how to enable): ``env`` wins when set, else the
    first default that exists; a folder counts when every path of ``required`` is a file in it."""
    configured = os.environ.get(env)
    folders = [Path(configured).expanduser()] if configured else list(defaults)
    origin = f"{env}={configured}" if configured else "defaults " + ", ".join(str(p) for p in folders)
    for folder in folders:
        if folder.is_dir():
            missing = [name for name in required if not (folder / name).is_file()]
            if missing:
                return None, f"{folder} ({origin}) lacks {', '.join(missing)}; to enable: {howto}"
            return folder, ""
    return None, f"the authors' clone was not found ({origin}); to enable: {howto}"


def require_clone(env: str, defaults: Sequence[Path], required: Sequence[str], howto: str,
                  label: str = "PARITY TESTS") -> Path:
    """:func:`find_clone`, or skip the calling test with the reason and how to enable it."""
    folder, why = find_clone(env, defaults, required, howto)
    if folder is None:
        pytest.skip(f"{label} SKIPPED: {why}")
    return folder


def _shims_needed() -> List[str]:
    return [name for name in SHIMMED if name not in sys.modules and importlib.util.find_spec(name) is None]


@contextlib.contextmanager
def authors_runtime() -> Iterator[List[str]]:
    """What the authors' code needs while it runs here: ``Tensor.cuda()`` / ``Module.cuda()``
    return their object unchanged (their code calls them unconditionally; the comparison runs on
    CPU), the stand-ins of missing packages are importable (some are imported inside functions),
    and their deprecation warnings are silenced. Yields the names of the stand-ins made available;
    stand-in modules loaded meanwhile are unloaded afterwards."""
    shims = _shims_needed()
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
        patch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
        if shims:
            sys.path.append(str(SHIMS))
        try:
            yield shims
        finally:
            if shims:
                sys.path.remove(str(SHIMS))
                for name in [n for n in sys.modules if n.split(".")[0] in shims]:
                    del sys.modules[name]


@contextlib.contextmanager
def isolated_imports(folder: Path, top_level: Iterable[str],
                     stubs: Mapping[str, types.ModuleType] = ()) -> Iterator[List[str]]:
    """``folder`` first on ``sys.path`` under :func:`authors_runtime`, an empty command line, no
    bytecode written; modules under the ``top_level`` names loaded meanwhile are removed afterwards
    and any earlier modules of those names restored. ``stubs``: module name -> object placed in
    ``sys.modules`` meanwhile (e.g. a module that loads a dataset at import time). Yields the
    names of the stand-ins used."""
    stubs = dict(stubs)
    names = set(top_level) | {name.split(".")[0] for name in stubs}

    def hidden(name: str) -> bool:
        return name.split(".")[0] in names

    saved = {name: mod for name, mod in sys.modules.items() if hidden(name)}
    for name in saved:
        del sys.modules[name]
    sys.modules.update(stubs)
    sys.path.insert(0, str(folder))
    argv, sys.argv = sys.argv, sys.argv[:1]  # their argparse runs at import time and must see no pytest options
    bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # leave the clone as it was
    try:
        with authors_runtime() as shims:
            yield shims
    finally:
        sys.dont_write_bytecode = bytecode
        sys.argv = argv
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if hidden(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def import_from_clone(folder: Path, modules: Sequence[str], top_level: Iterable[str],
                      stubs: Mapping[str, types.ModuleType] = ()) -> types.SimpleNamespace:
    """The named modules of the clone as attributes (dots become underscores), plus ``shims``
    (the stand-ins used), imported under :func:`isolated_imports`. Skips the test, with the
    reason, when they do not import."""
    with isolated_imports(folder, top_level, stubs) as shims:
        try:
            loaded = {name.replace(".", "_"): importlib.import_module(name) for name in modules}
        except ImportError as exc:
            pytest.skip(f"PARITY TESTS SKIPPED: the authors' code at {folder} does not import ({exc}); "
                        "see docs/testing.md")
    return types.SimpleNamespace(shims=tuple(shims), **loaded)
