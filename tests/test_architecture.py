"""The layer rules of docs/architecture.md, checked on the source: who may import torch, MMRec and
which package modules. Imports are read with ``ast`` (module-level and inside functions alike), so
a rule holds for every code path, not only the ones a test happens to run."""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "mmrec_rearm"
#: MMRec's top-level packages (it runs with ``src/`` as the working directory).
MMREC_PACKAGES = {"common", "utils", "models"}

#: Layers that import neither torch nor MMRec (graphs may be one module or a package).
NO_TORCH_NO_MMREC = ("data", "inter_parse", "features", "modalities", "graphs", "cache", "synth", "errors",
                     "hints", "atomic", "processes", "ledger", "install", "quickstart", "mmrec_output",
                     "mmrec_yaml", "cli", "costmodel", "estimate")
#: The only modules that import MMRec: the host adapter and the run's child process.
MMREC_IMPORTERS = {"host", "experiments.runner"}
#: The experiment modules that import torch: loading a checkpoint, the child's state writer, and the
#: child's in-memory fixes of MMRec models (e.g. Tensor.cuda on a host without CUDA).
EXPERIMENTS_WITH_TORCH = {"experiments.checkpoints", "experiments.runner_state", "experiments.runner_fixes"}
#: The run's child process: loaded by path in MMRec's Python, standard library at module level.
CHILD_SIDE = ("experiments.runner", "experiments.runner_events", "experiments.runner_state",
              "experiments.runner_checkpoint", "experiments.runner_fixes", "experiments.checkpoint_format",
              "atomic", "mmrec_output")
#: What the foundation and the model never import: the commands and the installer on top of them.
TOP_LAYERS = ("cli", "install", "quickstart", "ledger", "experiments", "estimate")


def _modules() -> Dict[str, Path]:
    """Package-relative module name (``model.rearm``; ``""`` for the package) -> file."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC / PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, module_level_only: bool = False) -> Iterator[Tuple[str, int]]:
    """(absolute dotted name, line) of every import in the module; relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes: List[ast.AST] = []
    if module_level_only:
        for node in tree.body:  # top-level statements, including a try / except around imports
            nodes.extend([node] + (list(ast.walk(node)) if isinstance(node, ast.Try) else []))
    else:
        nodes = list(ast.walk(tree))
    here = [PACKAGE] + (name.split(".") if name else [])
    if path.name != "__init__.py":
        here = here[:-1]
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                if node.module:
                    yield ".".join(base + [node.module]), node.lineno
                else:
                    for alias in node.names:
                        yield ".".join(base + [alias.name]), node.lineno
            else:
                yield node.module, node.lineno


def _in(name: str, layers) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in layers)


def _internal(target: str) -> str:
    return target[len(PACKAGE) + 1:] if target.startswith(PACKAGE + ".") else ""


def test_the_scan_finds_the_package_and_its_layers():
    modules = _modules()
    assert {"data", "cache", "model.rearm", "host", "experiments.runner", "cli"} <= set(modules)
    assert any(_in(name, ("graphs",)) for name in modules)
    found = {target for target, _ in _imports("model.rearm", modules["model.rearm"])}
    assert "torch" in found and f"{PACKAGE}.model.layers" in found and f"{PACKAGE}.data" in found


def test_foundation_layers_import_neither_torch_nor_mmrec():
    bad = [f"{name}:{line} imports {target}"
           for name, path in _modules().items() if _in(name, NO_TORCH_NO_MMREC)
           for target, line in _imports(name, path)
           if target.split(".")[0] in {"torch"} | MMREC_PACKAGES]
    assert not bad, bad


def test_only_the_host_adapter_and_the_runner_import_mmrec():
    bad = [f"{name}:{line} imports {target}"
           for name, path in _modules().items() if name not in MMREC_IMPORTERS
           for target, line in _imports(name, path) if target.split(".")[0] in MMREC_PACKAGES]
    assert not bad, bad


def test_experiments_import_torch_only_to_load_and_save_checkpoints():
    bad = [f"{name}:{line} imports {target}"
           for name, path in _modules().items()
           if _in(name, ("experiments",)) and name not in EXPERIMENTS_WITH_TORCH
           for target, line in _imports(name, path) if target.split(".")[0] == "torch"]
    assert not bad, bad


def test_the_child_process_modules_import_only_the_standard_library_at_module_level():
    """runner.py runs by path in MMRec's Python, which need not have our package's dependencies;
    its helpers are loaded the same way (package imports only inside try / except ImportError)."""
    stdlib: Set[str] = set(sys.stdlib_module_names)
    bad = []
    modules = _modules()
    for name in CHILD_SIDE:
        for target, line in _imports(name, modules[name], module_level_only=True):
            top = target.split(".")[0]
            if top not in stdlib and top != PACKAGE and not top.startswith("_mmrec_rearm_"):
                bad.append(f"{name}:{line} imports {target} at module level")
    assert not bad, bad


def test_foundation_and_model_never_import_the_layers_on_top():
    lower = NO_TORCH_NO_MMREC[:11] + ("model", "host", "official")  # data .. processes, and the model
    assert not any(_in(layer, lower) for layer in TOP_LAYERS)
    bad = [f"{name}:{line} imports {target}"
           for name, path in _modules().items() if _in(name, lower)
           for target, line in _imports(name, path) if _in(_internal(target), TOP_LAYERS)]
    assert not bad, bad
