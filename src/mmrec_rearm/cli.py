"""The ``mmrec-rearm`` command line: argument parsing only, each sub-command calls one function.

    mmrec-rearm graphs DATASET_DIR [--inter FILE] [--feature NAME=FILE ...] [--set key=value ...]
                       [--export OUT_DIR] [--cache-dir DIR] [--no-cache]
    mmrec-rearm cache ls DIR
    mmrec-rearm cache clear DIR [--key KEY]
    mmrec-rearm install MMREC_DIR
    mmrec-rearm uninstall MMREC_DIR
    mmrec-rearm quickstart --mmrec MMREC_DIR [--epochs N]
    mmrec-rearm compare | ablate | sensitivity | heatmap | recommend | tune | user-graph |
                convert-official-splits ...   (mmrec_rearm.experiments)

Errors raised on purpose by this package (``RearmError``) print ``error: <message>`` to stderr and
exit with status 2; an interrupt (Ctrl-C) exits with 130; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from .errors import DatasetError, GraphParamError, RearmError

__all__ = ["main", "build_parser", "parse_value", "parse_params", "EXPORT_NAMES"]

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


def _pairs(items: Optional[Sequence[str]], option: str, error) -> List[tuple]:
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


def _cmd_graphs(args: argparse.Namespace) -> int:
    from .cache import load_or_build, resolve_cache_dir
    from .data import read_dataset
    from .graphs import GraphParams, HomogeneousGraphs

    folder = Path(args.dataset_dir)
    features = None
    if args.feature:
        features = {}
        for name, file in _pairs(args.feature, "--feature", DatasetError):
            if name in features:
                raise DatasetError(f"--feature: modality '{name}' given twice; name each modality once.")
            features[name] = file
    params = GraphParams.from_mapping(parse_params(_pairs(args.set, "--set", GraphParamError), GraphParams))
    export_dir = _export_dir(Path(args.export)) if args.export else None  # fail before the build

    t0 = time.perf_counter()
    data = read_dataset(folder, inter_file=args.inter, features=features)
    dims = ",".join(f"{name}:{arr.shape[1]}" for name, arr in data.features.items())
    print(f"dataset {folder.resolve()}  users={data.n_users} items={data.n_items} "
          f"train={data.interactions.nnz} modalities={dims}")
    _progress(f"read dataset in {time.perf_counter() - t0:.2f} s")

    cache_dir = False if args.no_cache else args.cache_dir
    t1 = time.perf_counter()
    graphs, hit = load_or_build(data, params, cache_dir=cache_dir, progress=_progress)
    total = time.perf_counter() - t1
    status = "off" if args.no_cache else ("hit" if hit else "miss")
    where = "disabled" if args.no_cache else str(resolve_cache_dir(data, args.cache_dir))

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
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RearmError(f"{out_dir}: cannot create the export folder ({exc}); pick a writable path.") from exc
    return out_dir.resolve()


def _export(graphs, out_dir: Path) -> None:
    """Write each graph as ``<name>.npz`` (CSR float32, rows = users / items in id order)."""
    import numpy as np
    import scipy.sparse as sp

    for name in EXPORT_NAMES:
        mat = sp.csr_matrix(getattr(graphs, name), dtype=np.float32)
        sp.save_npz(out_dir / f"{name}.npz", mat)


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


def _installer(name: str) -> Callable:
    from . import install  # lazily: `graphs` must work without the installer's dependencies

    return getattr(install, name)


# The installer reports each file / the final metrics itself, so these handlers print nothing.
def _cmd_install(args: argparse.Namespace) -> int:
    _installer("install")(args.mmrec_dir)
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    _installer("uninstall")(args.mmrec_dir)
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    kwargs = {} if args.epochs is None else {"epochs": args.epochs}
    _installer("quickstart")(args.mmrec, **kwargs)
    return 0


# --------------------------------------------------------------------------------------------
# Parser and entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmrec-rearm", description="REARM for MMRec: homogeneous graphs and their cache, installer, experiments.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    g = sub.add_parser("graphs", help="build (or load from the cache) the homogeneous graphs of a dataset",
                       description="Read an MMRec dataset folder and build or load its homogeneous graphs.")
    g.add_argument("dataset_dir", metavar="DATASET_DIR")
    g.add_argument("--inter", metavar="FILE", help="interaction file (default: <folder name>.inter)")
    g.add_argument("--feature", metavar="NAME=FILE", action="extend", nargs="+",
                   help="modality feature file, repeatable; given -> exactly these, in this order "
                        "(default: image=image_feat.npy text=text_feat.npy)")
    g.add_argument("--set", metavar="KEY=VALUE", action="extend", nargs="+",
                   help="graph parameter, e.g. user_knn_k=25 or u_modal_weights=0.5,0.5")
    g.add_argument("--export", metavar="OUT_DIR", help="write each graph as OUT_DIR/<graph>.npz (CSR float32)")
    g.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: $MMREC_REARM_CACHE_DIR "
                                                      "or DATASET_DIR/.rearm_cache)")
    g.add_argument("--no-cache", action="store_true", help="always build, never read or write the cache")
    g.set_defaults(handler=_cmd_graphs)

    c = sub.add_parser("cache", help="list or clear a graph cache")
    c.add_argument("action", choices=("ls", "clear"))
    c.add_argument("dir", metavar="DIR", help="cache directory or dataset folder (uses DIR/.rearm_cache)")
    c.add_argument("--key", help="clear only this entry")
    c.set_defaults(handler=_cmd_cache)

    i = sub.add_parser("install", help="install REARM (and the Table-2 baselines MICRO, DiffMM, ApeGNN, MGDN, "
                                       "MIGGT) into an MMRec checkout")
    i.add_argument("mmrec_dir", metavar="MMREC_DIR")
    i.set_defaults(handler=_cmd_install)

    u = sub.add_parser("uninstall", help="remove REARM from an MMRec checkout")
    u.add_argument("mmrec_dir", metavar="MMREC_DIR")
    u.set_defaults(handler=_cmd_uninstall)

    q = sub.add_parser("quickstart", help="install, generate the demo dataset and train briefly")
    q.add_argument("--mmrec", metavar="MMREC_DIR", required=True)
    q.add_argument("--epochs", type=int, default=None)
    q.set_defaults(handler=_cmd_quickstart)

    from .experiments.commands import add_subcommands  # compare, tune, user-graph, convert-official-splits, ...

    add_subcommands(sub)
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
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM during runs: the runs in flight were killed
        print("interrupted: runs in flight were stopped and not recorded; rerun the same command to go on.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
