"""The ``mmrec-rearm`` command line: argument parsing only, each sub-command calls one function.

    mmrec-rearm graphs DATASET_DIR [--inter FILE] [--feature NAME=FILE ...] [--set key=value ...]
                       [--export OUT_DIR] [--cache-dir DIR] [--no-cache]
    mmrec-rearm graphs --mmrec MMREC_DIR -d DATASET [--set key=value ...] [--export OUT_DIR] ...
    mmrec-rearm cache ls DIR
    mmrec-rearm cache clear DIR [--key KEY]
    mmrec-rearm install --mmrec MMREC_DIR [--force]   (or: install MMREC_DIR; same for the next two)
    mmrec-rearm uninstall --mmrec MMREC_DIR [--force]
    mmrec-rearm quickstart --mmrec MMREC_DIR [--epochs N] [--force]
    mmrec-rearm run | compare | ablate | sensitivity | tune | heatmap | recommend | user-graph |
                convert-official-splits ...   (mmrec_rearm.experiments)
    mmrec-rearm estimate --mmrec MMREC_DIR -d DATASET | DATASET_DIR [--gpu-memory 24GB]   (mmrec_rearm.estimate)

Errors raised on purpose by this package (``RearmError``) print ``error: <message>`` to stderr and
exit with status 2; anything else is a bug and keeps its traceback. Ctrl-C (or SIGTERM during runs)
prints one line ``interrupted: <what finished, how to resume>`` and exits with status 130, without a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from .errors import ConfigError, DatasetError, GraphParamError, InstallError, Interrupted, RearmError

__all__ = ["main", "build_parser", "parse_value", "parse_params", "parse_pairs", "EXPORT_NAMES"]

#: Files written by ``graphs --export``, one per graph (scipy.sparse.save_npz, CSR float32).
EXPORT_NAMES = ("user_cooccurrence", "user_interest", "item_cooccurrence", "item_semantic",
                "user_homogeneous", "item_homogeneous")

_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}
_NONE = {"none", "null"}


# --------------------------------------------------------------------------------------------
# Value parsing for --set / --feature


def parse_value(text: str):
    """``--set`` value: bool (true/false/yes/no/on/off), None (none/null), int, float, a tuple
    for comma-separated values (``0.5,0.3,0.2``), else the string itself."""
    if "," in text:
        return tuple(_parse_scalar(part) for part in text.split(",") if part.strip())
    return _parse_scalar(text)


def _parse_scalar(text: str):
    word = text.strip()
    low = word.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    if low in _NONE:
        return None
    for kind in (int, float):
        try:
            return kind(word)
        except ValueError:
            pass
    return word


def parse_params(pairs: Sequence[tuple], params_cls) -> dict:
    """``--set`` pairs -> mapping for ``params_cls.from_mapping``, typed by each field's default.

    A field whose default is a string takes the text as is (so ``cooc_padding=none`` stays the
    string "none"); a float field turns ``1`` into ``1.0``; a field whose default is None (the
    per-modality weight tuples) takes ``none`` or comma-separated numbers, a single number
    becoming a 1-tuple. Unknown names pass through untouched for ``from_mapping`` to reject.
    """
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(params_cls)}
    out = {}
    for name, text in pairs:
        if name not in defaults:
            out[name] = text
            continue
        default = defaults[name]
        value = text.strip() if isinstance(default, str) else parse_value(text)
        if isinstance(default, float) and type(value) is int:
            value = float(value)
        elif default is None and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = (float(value),)
        elif default is None and isinstance(value, tuple):
            value = tuple(float(v) if type(v) is int else v for v in value)
        out[name] = value
    return out


def parse_pairs(items: Optional[Sequence[str]], option: str, error) -> List[tuple]:
    out = []
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise error(
                f"{option} {item!r}: expected NAME=VALUE (options that take several values go "
                "after DATASET_DIR).")
        out.append((name.strip(), value))
    return out


# --------------------------------------------------------------------------------------------
# Sub-commands


def _progress(message: str) -> None:
    print(f"[mmrec-rearm] {message}", file=sys.stderr, flush=True)


def _graph_inputs(args: argparse.Namespace):
    """(data, graph parameters, cache_dir default, where the data came from) for ``graphs``."""
    from .data import read_dataset
    from .graphs import GraphParams

    if args.mmrec or args.dataset:
        if not (args.mmrec and args.dataset) or args.dataset_dir or args.inter or args.feature:
            raise ConfigError("graphs: give --mmrec DIR -d DATASET (files, modalities and settings then come "
                              "from the checkout's YAML files, as in training), or a DATASET_DIR with --inter / "
                              "--feature / --set graph parameters; not both.")
        from .experiments.training_graphs import training_graph_inputs

        found = training_graph_inputs(args.mmrec, args.dataset, args.set or [])
        return found.data, found.params, found.cache_dir, f"as REARM trains on it (read {', '.join(found.sources)})"
    if not args.dataset_dir:
        raise ConfigError("graphs: give a DATASET_DIR, or --mmrec DIR -d DATASET for a dataset of an MMRec checkout.")
    features = None
    if args.feature:
        features = {}
        for name, file in parse_pairs(args.feature, "--feature", DatasetError):
            if name in features:
                raise DatasetError(f"--feature: modality '{name}' given twice; name each modality once.")
            features[name] = file
    params = GraphParams.from_mapping(parse_params(parse_pairs(args.set, "--set", GraphParamError), GraphParams))
    folder = Path(args.dataset_dir)
    if features is None:
        _note_other_features(folder)
    return read_dataset(folder, inter_file=args.inter, features=features), params, None, ""


def _note_other_features(folder: Path) -> None:
    """Name the *_feat.npy files the default (image_feat + text_feat) leaves out, e.g. TikTok's
    audio, with a command that includes them under the names training gives them."""
    from .hints import command

    defaults = ("image_feat.npy", "text_feat.npy")
    others = sorted(p.name for p in folder.glob("*_feat.npy") if p.name not in defaults)
    if not others:
        return
    files = [name for name in defaults if (folder / name).is_file()] + others
    with_all = command("graphs", folder, "--feature", *(f"{Path(f).stem}={f}" for f in files))
    _progress(f"note: {folder} also holds {', '.join(others)}, which the default modalities (image_feat.npy, "
              f"text_feat.npy) leave out; to include them: `{with_all}`. With an MMRec checkout, --mmrec and -d "
              "build exactly the graphs of its training runs (the files its dataset YAML names).")


def _cmd_graphs(args: argparse.Namespace) -> int:
    from .cache import load_or_build, resolve_cache_dir
    from .graphs import HomogeneousGraphs

    export_dir = _export_dir(Path(args.export)) if args.export else None  # fail before the build
    t0 = time.perf_counter()
    data, params, configured_cache, origin = _graph_inputs(args)
    dims = ",".join(f"{name}:{arr.shape[1]}" for name, arr in data.features.items())
    print(f"dataset {Path(data.source['inter']).parent}  users={data.n_users} items={data.n_items} "
          f"train={data.interactions.nnz} modalities={dims}" + (f"  {origin}" if origin else ""))
    _progress(f"read dataset in {time.perf_counter() - t0:.2f} s")

    cache_dir = False if args.no_cache else (args.cache_dir if args.cache_dir is not None else configured_cache)
    t1 = time.perf_counter()
    graphs, hit = load_or_build(data, params, cache_dir=cache_dir, progress=_progress)
    total = time.perf_counter() - t1
    status = "off" if cache_dir is False else ("hit" if hit else "miss")
    where = "disabled" if cache_dir is False else str(resolve_cache_dir(data, cache_dir))

    print(f"cache {where}")
    print(f"{'graph':<18} {'nodes':>8} {'edges':>10} {'seconds':>9} cache")
    for name in HomogeneousGraphs.GRAPH_NAMES:
        mat = getattr(graphs, name)
        print(f"{name:<18} {mat.shape[0]:>8} {mat.nnz:>10} {graphs.seconds.get(name, 0.0):>9.3f} {status}")
    print(f"total {total:.3f} s ({status})")
    if export_dir is not None:
        _export(graphs, export_dir)
        print(f"exported {len(EXPORT_NAMES)} graphs to {export_dir}")
    return 0


def _export_dir(out_dir: Path) -> Path:
    """The export folder, created and checked writable before the graphs are built."""
    from .atomic import check_writable

    return Path(check_writable(out_dir, what="the exported graphs"))


def _export(graphs, out_dir: Path) -> None:
    """Write each graph as ``<name>.npz`` (CSR float32, rows = users / items in id order), each
    atomically: a failure (full disk) leaves the previous file or none, never a torn one."""
    import io

    import numpy as np
    import scipy.sparse as sp

    from .atomic import write_bytes

    for name in EXPORT_NAMES:
        mat = sp.csr_matrix(getattr(graphs, name), dtype=np.float32)
        buffer = io.BytesIO()  # zipfile cannot be stopped cleanly mid-write; the file gets whole bytes
        sp.save_npz(buffer, mat)
        write_bytes(out_dir / f"{name}.npz", buffer.getvalue(), what=f"the exported graph {name}")


def _cmd_cache(args: argparse.Namespace) -> int:
    from . import cache

    if args.action == "ls":
        found = cache.entries(args.dir)
        print(f"cache {cache.find_cache_dir(args.dir)}: {len(found)} entr{'y' if len(found) == 1 else 'ies'}")
        for item in found:
            state = "ok" if item["ok"] else f"DAMAGED ({item.get('problem')})"
            print(f"{item['key']}  {item['bytes'] / 1e6:9.2f} MB  {item.get('created') or '?'}  "
                  f"users={item.get('n_users')} items={item.get('n_items')}  {state}")
        return 0
    removed = cache.clear(args.dir, key=args.key)
    print(f"removed {removed} entr{'y' if removed == 1 else 'ies'} from {cache.find_cache_dir(args.dir)}")
    return 0


def _installer(name: str, module: str = "install") -> Callable:
    import importlib  # lazily: `graphs` must work without the installer's dependencies

    return getattr(importlib.import_module(f"mmrec_rearm.{module}"), name)


def _checkout(args: argparse.Namespace, command: str) -> str:
    """The MMRec checkout of an installer command: ``--mmrec DIR`` or the positional form."""
    given = [value for value in (args.mmrec, args.mmrec_dir) if value]
    if not given:
        raise InstallError(f"{command}: which MMRec checkout? Give the folder you cloned MMRec into with --mmrec DIR.")
    roots = {p.parent if p.name == "src" and (p / "main.py").is_file() else p
             for p in (Path(value).expanduser().resolve() for value in given)}
    if len(roots) > 1:
        raise InstallError(f"{command}: --mmrec {given[0]} and {given[1]} name two checkouts; give one.")
    return given[0]


# The installer reports each file / the final metrics itself, so these handlers print nothing.
def _cmd_install(args: argparse.Namespace) -> int:
    _installer("install")(_checkout(args, "install"), **({"force": True} if args.force else {}))
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    _installer("uninstall")(_checkout(args, "uninstall"), **({"force": True} if args.force else {}))
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    kwargs = {} if args.epochs is None else {"epochs": args.epochs}
    if args.force:
        kwargs["force"] = True
    _installer("quickstart", "quickstart")(_checkout(args, "quickstart"), **kwargs)
    return 0


def _add_checkout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mmrec_dir", metavar="MMREC_DIR", nargs="?", help="the MMRec checkout (same as --mmrec)")
    parser.add_argument("--mmrec", metavar="DIR", help="the MMRec checkout (or its src folder)")


# --------------------------------------------------------------------------------------------
# Parser and entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmrec-rearm", description="REARM for MMRec: homogeneous graphs and their cache, installer, experiments.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    g = sub.add_parser("graphs", help="build (or load from the cache) the homogeneous graphs of a dataset",
                       description="Build or load the homogeneous graphs of a dataset: with --mmrec DIR -d DATASET "
                                   "exactly those REARM trains with in that checkout (its YAML files, modalities "
                                   "and cache folder), or those of any MMRec-format DATASET_DIR.")
    g.add_argument("dataset_dir", metavar="DATASET_DIR", nargs="?", help="a dataset folder (without --mmrec)")
    g.add_argument("--mmrec", metavar="DIR", help="MMRec checkout whose configuration REARM trains with")
    g.add_argument("-d", "--dataset", help="dataset name in that checkout (with --mmrec)")
    g.add_argument("--inter", metavar="FILE", help="interaction file (default: <folder name>.inter)")
    g.add_argument("--feature", metavar="NAME=FILE", action="extend", nargs="+",
                   help="modality feature file, repeatable; given -> exactly these, in this order "
                        "(default: image=image_feat.npy text=text_feat.npy)")
    g.add_argument("--set", metavar="KEY=VALUE", action="extend", nargs="+",
                   help="graph parameter, e.g. user_knn_k=25 or u_modal_weights=0.5,0.5; with --mmrec a REARM "
                        "setting as run --set takes it (YAML value, e.g. modalities=first)")
    g.add_argument("--export", metavar="OUT_DIR", help="write each graph as OUT_DIR/<graph>.npz (CSR float32)")
    g.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: REARM's rearm_cache_dir with "
                                                      "--mmrec, else $MMREC_REARM_CACHE_DIR, else "
                                                      "DATASET_DIR/.rearm_cache when writable)")
    g.add_argument("--no-cache", action="store_true", help="always build, never read or write the cache")
    g.set_defaults(handler=_cmd_graphs)

    c = sub.add_parser("cache", help="list or clear a graph cache")
    c.add_argument("action", choices=("ls", "clear"))
    c.add_argument("dir", metavar="DIR", help="cache directory or dataset folder (uses DIR/.rearm_cache)")
    c.add_argument("--key", help="clear only this entry")
    c.set_defaults(handler=_cmd_cache)

    i = sub.add_parser("install", help="install REARM (and the Table-2 baselines MICRO, DiffMM, ApeGNN, MGDN, "
                                       "MIGGT) into an MMRec checkout",
                       description="Write the shim and YAML files of REARM and the five Table-2 baselines MMRec "
                                   "lacks (MICRO, DiffMM, ApeGNN, MGDN, MIGGT) into an MMRec checkout and record each, "
                                   "with its content hash, in MMREC_DIR/.mmrec-rearm-RECORD. A file that is not "
                                   "ours, or that changed since we wrote it, is never overwritten.")
    _add_checkout(i)
    i.add_argument("--force", action="store_true",
                   help="move each file in the way (yours, or changed since install) to FILE.bak, then write ours")
    i.set_defaults(handler=_cmd_install)

    u = sub.add_parser("uninstall", help="remove REARM from an MMRec checkout",
                       description="Remove what install / quickstart / compare recorded in the ledger and is "
                                   "unchanged. Edited files and folders holding files of yours stay.")
    _add_checkout(u)
    u.add_argument("--force", action="store_true",
                   help="move edited files (and folders holding files of yours) to NAME.bak instead of keeping "
                        "them in place; nothing is ever deleted that was not ours and unchanged")
    u.set_defaults(handler=_cmd_uninstall)

    q = sub.add_parser("quickstart", help="install, generate the demo dataset and train briefly")
    _add_checkout(q)
    q.add_argument("--epochs", type=int, default=None)
    q.add_argument("--force", action="store_true", help="as install --force, for the install and demo files")
    q.set_defaults(handler=_cmd_quickstart)

    from .experiments.commands import add_subcommands  # compare, tune, user-graph, convert-official-splits, ...
    from .estimate import add_subcommand as add_estimate

    add_subcommands(sub)
    add_estimate(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``mmrec-rearm`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage / help
        return int(exc.code or 0)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.handler(args))
    except RearmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"interrupted: {_interrupted(args.command, exc)}", file=sys.stderr)
        return 130


def _interrupted(command: str, exc: KeyboardInterrupt) -> str:
    """The one line for Ctrl-C: the command's own account when it gave one (:class:`Interrupted`)."""
    if isinstance(exc, Interrupted) and str(exc):
        return str(exc)
    return (f"`mmrec-rearm {command}` stopped before it finished. Files are only ever replaced whole and the "
            "graph cache keeps complete entries only, so nothing half-written was left; run the same command "
            "again to redo the work.")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
