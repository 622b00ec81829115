"""Argument parsing for the experiment sub-commands; ``cli.py`` mounts them with
:func:`add_subcommands`. Each handler takes the parsed namespace and returns an exit code (``compare``: 1 when a run
of this invocation failed, else 0);
errors of this package (:class:`~mmrec_rearm.errors.RearmError`) propagate to the caller.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from .compare import compare
from .datasets import convert_official_splits, detect_feature_files, write_dataset_yaml
from .user_graph import DEFAULT_NEIGHBOURS, make_user_graph_dict


def run_compare(args: argparse.Namespace) -> int:
    seeds = args.seed_list if args.seed_list else args.seeds
    report = compare(args.mmrec, args.dataset, args.models, seeds=seeds, epochs=args.epochs,
                     overrides=args.set or [], results_dir=args.results, python=args.python,
                     data_dir=args.data_dir, target=args.target or None, execute=not args.dry_run,
                     retry_failed=not args.no_retry_failed, timeout_s=args.timeout,
                     user_graph_k=args.user_graph_k)
    return 1 if report.failed else 0


def run_user_graph(args: argparse.Namespace) -> int:
    if args.mmrec:
        if not args.dataset:
            raise ConfigError("user-graph: --mmrec needs -d/--dataset NAME to find the dataset folder.")
        path = make_user_graph_dict(args.mmrec, args.dataset, k=args.k, inter_file=args.inter_file,
                                    file_name=args.file_name)
    elif args.folder:
        path = make_user_graph_dict(args.folder, k=args.k, inter_file=args.inter_file, file_name=args.file_name)
    else:
        raise ConfigError("user-graph: give a dataset FOLDER, or --mmrec DIR -d DATASET.")
    print(f"wrote {path}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    inter = convert_official_splits(args.folder, name=args.name, out_dir=args.out, overwrite=args.overwrite)
    print(f"wrote {inter}")
    if args.mmrec:
        name = inter.stem
        vision, text, note = detect_feature_files(inter.parent)
        path = write_dataset_yaml(args.mmrec, name, inter_file=inter.name, vision_feature_file=vision,
                                  text_feature_file=text, note=note, overwrite=args.overwrite)
        print(f"wrote {path}" + (f" ({note})" if note else ""))
    return 0


def add_subcommands(subparsers: "argparse._SubParsersAction") -> None:
    """Add ``compare``, ``user-graph`` and ``convert-official-splits``; each sets ``handler``
    (``handler(args) -> exit code``, the convention of :mod:`mmrec_rearm.cli`)."""
    p = subparsers.add_parser(
        "compare", help="run models side by side through MMRec; Table 2 with validation-only selection",
        description="Run every (model, configuration, seed) through MMRec's quick_start, one process each. "
                    "Finished runs are kept in RESULTS/DATASET/runs.jsonl; rerunning resumes.")
    p.add_argument("--mmrec", required=True, help="MMRec checkout (or its src folder)")
    p.add_argument("-d", "--dataset", required=True, help="dataset name (MMRec's configs/dataset/NAME.yaml)")
    p.add_argument("-m", "--models", nargs="+", required=True, help="MMRec model names, e.g. REARM LightGCN FREEDOM")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds: 999, 1000, ... (default 1)")
    p.add_argument("--seed-list", type=int, nargs="+", help="explicit seeds instead of --seeds")
    p.add_argument("--epochs", type=int, help="epoch budget of every run (default: the YAML's, 1000)")
    p.add_argument("--set", action="extend", nargs="+", metavar="MODEL.key=value",
                   help="pin a setting (removes it from the grid); a YAML list on a grid key sets its "
                        "candidates; key=value without MODEL applies to every model")
    p.add_argument("--results", default="results", help="results folder (default ./results)")
    p.add_argument("--python", default=sys.executable, help="Python that runs MMRec (default: this one)")
    p.add_argument("--data-dir", help="dataset folder outside the checkout (staged with symlinks)")
    p.add_argument("--target", default="REARM", help="model tested against the baselines ('' for none)")
    p.add_argument("--dry-run", action="store_true", help="list the runs still to do and rewrite the tables only")
    p.add_argument("--no-retry-failed", action="store_true", help="keep failed runs failed instead of rerunning")
    p.add_argument("--timeout", type=float, help="seconds after which a run is killed and recorded as failed")
    p.add_argument("--user-graph-k", type=int, default=DEFAULT_NEIGHBOURS,
                   help="neighbours kept per user in user_graph_dict.npy (default 200, like MMRec's script)")
    p.set_defaults(handler=run_compare)

    g = subparsers.add_parser("user-graph", help="write DRAGON/DualGNN's user_graph_dict.npy (sparse, seconds)")
    g.add_argument("folder", nargs="?", help="dataset folder (with NAME.inter)")
    g.add_argument("--mmrec", help="MMRec checkout: the folder and file names come from its configuration")
    g.add_argument("-d", "--dataset", help="dataset name (with --mmrec)")
    g.add_argument("--inter-file", help="interaction file name (default NAME.inter)")
    g.add_argument("--file-name", help="output file name (default user_graph_dict.npy)")
    g.add_argument("--k", type=int, default=DEFAULT_NEIGHBOURS, help="neighbours kept per user (default 200)")
    g.set_defaults(handler=run_user_graph)

    c = subparsers.add_parser("convert-official-splits",
                              help="official REARM train/valid/test.npy -> MMRec NAME.inter (+ dataset YAML)")
    c.add_argument("folder", help="folder with train.npy, valid.npy, test.npy")
    c.add_argument("--name", help="dataset name (default: the folder name)")
    c.add_argument("--out", help="output folder (default: the input folder)")
    c.add_argument("--mmrec", help="also write src/configs/dataset/NAME.yaml into this MMRec checkout")
    c.add_argument("--overwrite", action="store_true", help="replace an existing different .inter / our YAML")
    c.set_defaults(handler=run_convert)
