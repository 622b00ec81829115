"""Argument parsing for ``mmrec-rearm run`` (one MMRec run with overrides, progress and resume);
:func:`add_run_subcommand` mounts it, the work is :func:`.single.run_one`."""
from __future__ import annotations

import argparse
import sys

from .plan import FIRST_SEED


def run_single(args: argparse.Namespace) -> int:
    from .single import run_one

    record = run_one(args.mmrec, args.dataset, args.model, epochs=args.epochs, overrides=args.set or [],
                     seed=args.seed, device=args.device, threads=args.threads, results_dir=args.results,
                     python=args.python, data_dir=args.data_dir, fresh=args.fresh, execute=not args.dry_run,
                     timeout_s=args.timeout)
    return 0 if record is None or record.get("status") == "ok" else 1


def add_mmrec_command(subparsers: "argparse._SubParsersAction", name: str, handler, summary: str, description: str,
                      **mmrec_options) -> argparse.ArgumentParser:
    """The subcommand ``name`` of a command that runs MMRec (run, compare, tune): its parser, with the
    ``--mmrec`` and ``-d/--dataset`` arguments every such command takes (both required;
    ``mmrec_options`` go to ``--mmrec``, e.g. ``metavar``) and ``handler`` (``handler(args) -> exit
    code``). The caller adds the command's own arguments to the returned parser."""
    parser = subparsers.add_parser(name, help=summary, description=description)
    parser.add_argument("--mmrec", required=True, help="MMRec checkout (or its src folder)", **mmrec_options)
    parser.add_argument("-d", "--dataset", required=True, help="dataset name (MMRec's configs/dataset/NAME.yaml)")
    parser.set_defaults(handler=handler)
    return parser


_RUN_SUMMARY = "train one MMRec model once, with overrides, live progress and resume"
_RUN_DESCRIPTION = """\
Train one model (any MMRec model, REARM by default) on one dataset through MMRec's own quick_start.
Shows a progress bar inside each epoch and one line per epoch (time, each named loss, the validation
metric). The training state is saved after every epoch: after an interruption, the same command
continues from the last finished epoch. The record goes to RESULTS/DATASET/runs.jsonl, shared with
compare."""


def add_run_subcommand(subparsers: "argparse._SubParsersAction") -> None:
    r = add_mmrec_command(subparsers, "run", run_single, _RUN_SUMMARY, _RUN_DESCRIPTION, metavar="DIR")
    r.add_argument("-m", "--model", default="REARM", help="MMRec model name (default REARM)")
    r.add_argument("--epochs", type=int, help="epoch budget (default: the YAML's; early stopping as configured)")
    r.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="setting for this run, e.g. learning_rate=0.001 n_layers=2 (YAML values)")
    r.add_argument("--device", metavar="cpu|cuda|cuda:K", help="where to train (default: MMRec's, the first GPU "
                                                               "when there is one)")
    r.add_argument("--threads", type=int, metavar="N", help="CPU threads of the run (OMP/MKL/BLAS; default: as "
                                                            "torch chooses, all cores)")
    r.add_argument("--seed", type=int, default=FIRST_SEED, help=f"random seed (default {FIRST_SEED}, MMRec's)")
    r.add_argument("--results", default="results", help="results folder (default ./results)")
    r.add_argument("--data-dir", metavar="DIR", help="dataset folder outside the checkout (staged with symlinks)")
    r.add_argument("--python", default=sys.executable, help="Python that runs MMRec (default: this one)")
    r.add_argument("--fresh", action="store_true", help="train from epoch 0 even if the run finished or has a "
                                                        "saved state")
    r.add_argument("--dry-run", action="store_true", help="check the checkout, model, data and settings; train nothing")
    r.add_argument("--timeout", type=float, metavar="S", help="kill the run after S seconds (its state is kept)")
