"""Argument parsing for the experiment sub-commands (``compare``, ``user-graph``,
``convert-official-splits``, ``ablate``, ``sensitivity``, ``heatmap``, ``recommend``, ``tune``); ``cli.py`` mounts them with
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
from .run_command import add_mmrec_command
from .user_graph import DEFAULT_NEIGHBOURS, make_user_graph_dict


def run_compare(args: argparse.Namespace) -> int:
    seeds = args.seed_list if args.seed_list else args.seeds
    report = compare(args.mmrec, args.dataset, args.models, seeds=seeds, epochs=args.epochs,
                     overrides=args.set or [], results_dir=args.results, python=args.python,
                     data_dir=args.data_dir, target=args.target or None, execute=not args.dry_run,
                     retry_failed=not args.no_retry_failed, timeout_s=args.timeout,
                     user_graph_k=args.user_graph_k, jobs=args.jobs, devices=args.devices,
                     from_tune=_studies(args.from_tune), tune_storage=args.tune_storage)
    return 1 if report.failed else 0


def _studies(items):
    """``--from-tune`` [MODEL=STUDY ...] -> None (not given) or model -> study name."""
    if items is None:
        return None
    out = {}
    for item in items:
        model, sep, study = item.partition("=")
        if not sep or not model or not study:
            raise ConfigError(f"--from-tune {item!r}: expected MODEL=STUDY (or --from-tune alone for the default "
                              "study names DATASET.MODEL).")
        out[model] = study
    return out


def _add_parallel_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int, metavar="K",
                   help="runs at once on this machine, each with its share of the CPU threads (default 1; "
                        "with --devices: one per device)")
    p.add_argument("--devices", metavar="LIST", help="devices dealt to the parallel runs, e.g. cuda:0,cuda:1 or cpu")


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


_COMPARE_SUMMARY = "run models side by side through MMRec; Table 2 with validation-only selection"
_COMPARE_DESCRIPTION = """\
Run every (model, configuration, seed) through MMRec's quick_start, one process each. Finished runs
are kept in RESULTS/DATASET/runs.jsonl; rerunning resumes."""


def add_subcommands(subparsers: "argparse._SubParsersAction") -> None:
    """Add ``compare``, ``user-graph``, ``convert-official-splits``, ``ablate``, ``sensitivity``, ``heatmap``,
    ``recommend`` and ``tune``; each sets ``handler``
    (``handler(args) -> exit code``, the convention of :mod:`mmrec_rearm.cli`)."""
    p = add_mmrec_command(subparsers, "compare", run_compare, _COMPARE_SUMMARY, _COMPARE_DESCRIPTION)
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
    _add_parallel_options(p)
    p.add_argument("--from-tune", nargs="*", metavar="MODEL=STUDY",
                   help="run each model's best tuning trial instead of its MMRec grid (study DATASET.MODEL "
                        "unless named)")
    p.add_argument("--tune-storage", metavar="URL|FILE",
                   help="Optuna storage of --from-tune (default RESULTS/DATASET/optuna.journal)")

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

    _add_extra_subcommands(subparsers)
    _add_tune_subcommand(subparsers)
    from .run_command import add_run_subcommand

    add_run_subcommand(subparsers)


# ------------------------------------------------------------------------------------------------
# ablate, sensitivity, heatmap, recommend. Their modules are imported by the
# handlers, so that building the parser stays as light as before.


def _seeds(args: argparse.Namespace):
    return args.seed_list if args.seed_list else args.seeds


def run_ablate(args: argparse.Namespace) -> int:
    from .ablate import ablate

    report = ablate(args.mmrec, args.dataset, seeds=_seeds(args), epochs=args.epochs, overrides=args.set or [],
                    results_dir=args.results, python=args.python, parts=args.only or ("table3", "fig4"),
                    variants=args.variants, data_dir=args.data_dir, execute=not args.dry_run,
                    retry_failed=not args.no_retry_failed, timeout_s=args.timeout, jobs=args.jobs,
                    devices=args.devices)
    return 1 if report.failed else 0


def _data_dirs(items, datasets):
    """``--data-dir``: DIR (one dataset) or NAME=DIR items."""
    if not items:
        return None
    if len(items) == 1 and "=" not in items[0]:
        return items[0]
    out = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or name not in datasets:
            raise ConfigError(f"--data-dir {item!r}: expected NAME=DIR with NAME one of {list(datasets)}.")
        out[name] = folder
    return out


def run_sensitivity(args: argparse.Namespace) -> int:
    from .mmrec_config import parse_yaml_text
    from .sensitivity import sensitivity

    values = [parse_yaml_text(v, f"--values {v!r}") for v in args.values] if args.values else None
    report = sensitivity(args.mmrec, args.dataset, args.param, values, seeds=_seeds(args), epochs=args.epochs,
                         overrides=args.set or [], results_dir=args.results, python=args.python,
                         data_dirs=_data_dirs(args.data_dir, args.dataset), metric=args.metric,
                         plot=not args.no_plot, execute=not args.dry_run, retry_failed=not args.no_retry_failed,
                         timeout_s=args.timeout, jobs=args.jobs, devices=args.devices)
    return 1 if report.failed else 0


def run_heatmap(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .heatmap import find_checkpoint_pair, heatmap

    if args.after and args.before:
        after, before = args.after, args.before
        out = args.out or "heatmap.png"
    elif args.dataset and not (args.after or args.before):
        after, before = find_checkpoint_pair(args.results, args.dataset, args.seed)
        out = args.out or str(Path(args.results) / args.dataset / "heatmap.png")
    else:
        raise ConfigError("heatmap: give both --after FILE and --before FILE, or -d DATASET to take them from "
                          "the results store.")
    result = heatmap(after, before, out, users=args.users, items=args.items, n_users=args.n_users,
                     n_items=args.n_items, seed=args.sample_seed, data_dir=args.data_dir, plot=not args.no_plot,
                     allow_other_data=args.allow_other_data)
    print(f"compared {after} (after) with {before} (before)")
    print(f"wrote {', '.join(str(p) for p in result.files.values())}")
    return 0


def run_recommend(args: argparse.Namespace) -> int:
    from .recommend import read_users_file, recommend, recommendations_csv

    users = args.users if args.users else read_users_file(args.users_file)
    rows = recommend(args.checkpoint, users, top_k=args.top_k, out_csv=args.out, data_dir=args.data_dir,
                     exclude_train=not args.include_train, allow_other_data=args.allow_other_data)
    if args.out:
        print(f"wrote {len(rows)} rows to {args.out}")
    else:
        sys.stdout.write(recommendations_csv(rows))
    return 0


_OTHER_DATA_HELP = ("use a dataset whose data fingerprint differs from the one the checkpoint was trained on "
                    "(refused otherwise: same counts but other interactions, features or ids), with a warning")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The options ``ablate`` and ``sensitivity`` share with ``compare`` (same meaning)."""
    p.add_argument("--mmrec", required=True, help="MMRec checkout (or its src folder) with REARM installed")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds: 999, 1000, ... (default 1)")
    p.add_argument("--seed-list", type=int, nargs="+", help="explicit seeds instead of --seeds")
    p.add_argument("--epochs", type=int, help="epoch budget of every run (default: the YAML's, 1000)")
    p.add_argument("--set", action="extend", nargs="+", metavar="[REARM.]key=value",
                   help="setting for every run, as in compare")
    p.add_argument("--results", default="results", help="results folder (default ./results)")
    p.add_argument("--python", default=sys.executable, help="Python that runs MMRec (default: this one)")
    p.add_argument("--dry-run", action="store_true", help="list the runs still to do and rewrite the outputs only")
    p.add_argument("--no-retry-failed", action="store_true", help="keep failed runs failed instead of rerunning")
    p.add_argument("--timeout", type=float, help="seconds after which a run is killed and recorded as failed")
    _add_parallel_options(p)


def _add_extra_subcommands(subparsers: "argparse._SubParsersAction") -> None:
    a = subparsers.add_parser(
        "ablate", help="REARM's Table 3 ablations and Fig. 4 single-modality variants (table3.md, fig4.md)",
        description="Run REARM's Table 3 variants (w/o uu ... w/o ref, full) and Fig. 4 variants (one modality) "
                    "through MMRec, stored and resumed like compare; write RESULTS/DATASET/table3.md|csv and "
                    "fig4.md|csv.")
    _add_run_options(a)
    a.add_argument("-d", "--dataset", required=True, help="dataset name (MMRec's configs/dataset/NAME.yaml)")
    a.add_argument("--data-dir", help="dataset folder outside the checkout (staged with symlinks)")
    a.add_argument("--only", nargs="+", choices=("table3", "fig4"), help="run only these parts (default both)")
    a.add_argument("--variants", nargs="+", metavar="NAME",
                   help="only these variants: wo_uu wo_ii wo_co wo_sim wo_hom wo_meta wo_ort wo_ref full first second")
    a.set_defaults(handler=run_ablate)

    s = subparsers.add_parser(
        "sensitivity", help="Fig. 3: test R@20 against one REARM parameter, one line per dataset (PNG + CSV)",
        description="Run REARM once per value of --param (per dataset and seed), stored and resumed like "
                    "compare; write RESULTS/sensitivity/PARAM.csv and PARAM.png.")
    _add_run_options(s)
    s.add_argument("-d", "--dataset", nargs="+", required=True, help="dataset name(s)")
    s.add_argument("--param", required=True, help="REARM setting, e.g. uu_co_weight, ii_co_weight, rank, n_layers")
    s.add_argument("--values", nargs="+", metavar="V",
                   help="values (YAML, e.g. 0 0.1 0.2); default: the paper's grid for the four Fig. 3 parameters")
    s.add_argument("--data-dir", nargs="+", metavar="[NAME=]DIR",
                   help="dataset folder(s) outside the checkout: DIR for one dataset, else NAME=DIR each")
    s.add_argument("--metric", default="recall@20", help="MMRec test metric to plot (default recall@20)")
    s.add_argument("--no-plot", action="store_true", help="write the CSV only (no matplotlib needed)")
    s.set_defaults(handler=run_sensitivity)

    h = subparsers.add_parser(
        "heatmap", help="Fig. 5: change of predicted probabilities by the refinement (full vs w/o ref), PNG + CSV",
        description="Rebuild the full REARM and its w/o ref variant from their best-validation checkpoints and "
                    "plot sigmoid(score) after minus before for a sample of users and items, marking training "
                    "(boxes) and test (stars) interactions.")
    h.add_argument("--after", metavar="FILE", help="checkpoint of the full model")
    h.add_argument("--before", metavar="FILE", help="checkpoint of the w/o ref model")
    h.add_argument("-d", "--dataset", help="find both checkpoints in RESULTS/DATASET/runs.jsonl instead")
    h.add_argument("--results", default="results", help="results folder (with -d; default ./results)")
    h.add_argument("--seed", type=int, help="with -d: the seed of the two runs (default: the smallest with both)")
    h.add_argument("--users", type=int, nargs="+", help="user ids to show (default: a seeded sample)")
    h.add_argument("--items", type=int, nargs="+", help="item ids to show (default: a seeded sample)")
    h.add_argument("--n-users", type=int, default=20, help="sampled users (default 20)")
    h.add_argument("--n-items", type=int, default=20, help="sampled items (default 20)")
    h.add_argument("--sample-seed", type=int, default=0, help="seed of the sample (default 0)")
    h.add_argument("--out", help="PNG file (default RESULTS/DATASET/heatmap.png with -d, else heatmap.png); "
                                 "the numbers go to the same name with .csv")
    h.add_argument("--data-dir", help="dataset folder, when it moved since training")
    h.add_argument("--no-plot", action="store_true", help="write the CSV only (no matplotlib needed)")
    h.add_argument("--allow-other-data", action="store_true", help=_OTHER_DATA_HELP)
    h.set_defaults(handler=run_heatmap)

    r = subparsers.add_parser(
        "recommend", help="top-k items per user from a saved REARM checkpoint (CSV: user, rank, item, score)",
        description="Rebuild REARM from a best-validation checkpoint (no MMRec needed) and write each user's "
                    "top-k items, training items excluded.")
    r.add_argument("--checkpoint", required=True, metavar="FILE", help="RESULTS/DATASET/checkpoints/KEY.pt")
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", type=int, nargs="+", help="user ids")
    who.add_argument("--users-file", metavar="F", help="file of user ids (whitespace / comma separated)")
    r.add_argument("--top-k", type=int, default=20, help="items per user (default 20)")
    r.add_argument("--out", metavar="CSV", help="output CSV (default: standard output)")
    r.add_argument("--data-dir", help="dataset folder, when it moved since training")
    r.add_argument("--include-train", action="store_true", help="do not exclude the users' training items")
    r.add_argument("--allow-other-data", action="store_true", help=_OTHER_DATA_HELP)
    r.set_defaults(handler=run_recommend)


# ------------------------------------------------------------------------------------------------
# tune (Optuna, optional): the module, and optuna with it, is imported by the handler only


def run_tune(args: argparse.Namespace) -> int:
    from .tune import tune

    tune(args.mmrec, args.dataset, args.model, args.trials, epochs=args.epochs, space_file=args.space,
         storage=args.storage, jobs=args.jobs, devices=args.devices, study_name=args.study, seed=args.seed,
         sampler_seed=args.sampler_seed, pruner=args.pruner, warmup_epochs=args.warmup_epochs,
         startup_trials=args.startup_trials, overrides=args.set or [], results_dir=args.results,
         python=args.python, data_dir=args.data_dir, timeout_s=args.timeout, summary=not args.no_summary,
         execute=not args.dry_run)
    return 0


_TUNE_SUMMARY = "Optuna search over one model's settings, on validation only, with pruning (needs optuna)"
_TUNE_DESCRIPTION = """\
Tune one MMRec model with Optuna: each trial is one run (stored in RESULTS/DATASET/runs.jsonl), its
objective MMRec's validation metric; per-epoch validation feeds the pruner. Rerun to continue; start
more workers with the same --storage and --study to scale out. Writes RESULTS/DATASET/tune/STUDY.md
and PNG figures."""


def _add_tune_subcommand(subparsers: "argparse._SubParsersAction") -> None:
    t = add_mmrec_command(subparsers, "tune", run_tune, _TUNE_SUMMARY, _TUNE_DESCRIPTION)
    t.add_argument("-m", "--model", required=True, help="MMRec model name, e.g. REARM or LightGCN")
    t.add_argument("--trials", type=int, required=True, help="complete + pruned trials the study ends with")
    t.add_argument("--epochs", type=int, help="epoch budget of every trial (default: the YAML's)")
    t.add_argument("--space", metavar="FILE", help="YAML of ranges / choices (default: MMRec's hyper_parameters, "
                                                   "and for REARM our configs/tune/REARM.yaml)")
    t.add_argument("--storage", metavar="URL|FILE", help="Optuna storage shared by the workers: a journal file "
                   "(default RESULTS/DATASET/optuna.journal) or a database URL (postgresql://...)")
    t.add_argument("--study", metavar="NAME", help="study name (default DATASET.MODEL)")
    t.add_argument("--seed", type=int, default=999, help="MMRec seed of every trial (default 999)")
    t.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler (give each worker its own)")
    t.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                   help="Optuna pruner fed each epoch's validation score (default median)")
    t.add_argument("--warmup-epochs", type=int, default=1, help="epochs before a trial may be pruned (default 1)")
    t.add_argument("--startup-trials", type=int, default=3,
                   help="finished trials before the median pruner prunes (default 3)")
    t.add_argument("--set", action="extend", nargs="+", metavar="[MODEL.]key=value",
                   help="pin a setting (it is not searched), as in compare")
    t.add_argument("--results", default="results", help="results folder (default ./results)")
    t.add_argument("--python", default=sys.executable, help="Python that runs MMRec (default: this one)")
    t.add_argument("--data-dir", help="dataset folder outside the checkout (staged with symlinks)")
    t.add_argument("--timeout", type=float, help="seconds after which a trial's run is killed and failed")
    t.add_argument("--no-summary", action="store_true", help="write no Markdown / PNG summary")
    t.add_argument("--dry-run", action="store_true", help="print the study, search space and slots; run nothing")
    _add_parallel_options(t)
