"""Render comparison results in the paper's Table 2 layout (Markdown and CSV), as pure text.

Rows are models in the paper's row order (models it does not list after them, the target model
last, as REARM is in the paper), columns R@10, R@20, N@10, N@20 on the test split as
``mean ± std`` over seeds. For Baby, Sports and Clothing each of our columns is followed by the
paper's published value (MMRec's ``MIGGT`` is the paper's "MIG-GT"). Among our numbers the best
of a column is bold and the second best underlined, as in the paper. A model whose chosen runs
stopped at the epoch cap while still improving (:func:`~.stats.near_cap`) is marked with
:data:`CAPPED` and a note under the table.
"""
from __future__ import annotations

import csv
import io
import json
from typing import Dict, List, Mapping, Optional, Sequence

from .paper import has_paper_numbers, paper_name, paper_order, paper_row
from .stats import CAP_SHARE, TABLE_METRICS, ModelSummary, PairedComparison, best_baseline

DASH = "—"
#: Marks a model (and a best epoch) at the epoch cap.
CAPPED = "†"
CAPPED_NOTE = (f"{CAPPED} best validation epoch in the last {{share}} of the epoch budget in at least one seed: "
               "still improving when training stopped, so the number understates a converged model "
               "(rerun with a larger --epochs).")


def _capped(summary: ModelSummary) -> bool:
    chosen = summary.selected
    return chosen is not None and any(chosen.capped.get(s) for s in chosen.seeds)


def _capped_footer(summaries: Sequence[ModelSummary]) -> str:
    return ("\n" + CAPPED_NOTE.format(share=f"{CAP_SHARE:.0%}") + "\n") if any(_capped(s) for s in summaries) else ""


def _fmt(value: Optional[float], digits: int = 4) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def _table_head(first: str, paper_labels: Sequence[str]) -> List[str]:
    """Header and separator lines of a results table: ``first``, each metric of
    :data:`TABLE_METRICS` (followed by its published value where its label is in
    ``paper_labels``), then the seed count."""
    header = [first]
    for label, _ in TABLE_METRICS:
        header.append(label)
        if label in paper_labels:
            header.append(f"{label} (paper)")
    header.append("seeds")
    return ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]


def _cell(summary: ModelSummary, metric: str) -> str:
    chosen = summary.selected
    if chosen is None or chosen.mean("test", metric) is None:
        return DASH
    mean, std = chosen.mean("test", metric), chosen.std("test", metric)
    return _fmt(mean) if std is None else f"{mean:.4f} ± {std:.4f}"


def row_order(models: Sequence[str], target: Optional[str]) -> List[str]:
    """Table 2's row order (:func:`~.paper.paper_order`: the paper's rows in its order, others
    after them as requested) with the target model moved to the end."""
    return [m for m in paper_order(models) if m != target] + ([target] if target in models else [])


def _ranks(summaries: Mapping[str, ModelSummary], models: Sequence[str], metric: str) -> Dict[str, int]:
    """model -> 1 (best) or 2 (second best) by mean test value, rounded as displayed."""
    values = {m: round(summaries[m].selected.mean("test", metric), 4) for m in models
              if summaries[m].selected is not None and summaries[m].selected.mean("test", metric) is not None}
    if len(values) < 2:
        return {}
    distinct = sorted(set(values.values()), reverse=True)
    ranks = {m: 1 for m, v in values.items() if v == distinct[0]}
    if len(distinct) > 1:
        ranks.update({m: 2 for m, v in values.items() if v == distinct[1]})
    return ranks


def table2_markdown(dataset: str, summaries: Mapping[str, ModelSummary], models: Sequence[str],
                    target: Optional[str] = "REARM") -> str:
    """The Table 2 block alone (header, separator, one row per model)."""
    order = row_order(models, target)
    with_paper = has_paper_numbers(dataset)
    lines = _table_head("Model", [label for label, _ in TABLE_METRICS] if with_paper else [])
    ranks = {metric: _ranks(summaries, order, metric) for _, metric in TABLE_METRICS}
    for model in order:
        summary = summaries[model]
        published = paper_row(dataset, model) if with_paper else None
        cells = [paper_name(model) + (f" {CAPPED}" if _capped(summary) else "")]
        for index, (_, metric) in enumerate(TABLE_METRICS):
            text = _cell(summary, metric)
            rank = ranks[metric].get(model)
            cells.append(f"**{text}**" if rank == 1 else f"<u>{text}</u>" if rank == 2 else text)
            if with_paper:
                cells.append(_fmt(published[index]) if published else DASH)
        cells.append(str(len(summary.selected.seeds)) if summary.selected else "0")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + _capped_footer([summaries[m] for m in order])


def _p_text(p: Optional[float]) -> str:
    if p is None:
        return "p n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def comparison_markdown(rows: Sequence[PairedComparison], summaries: Mapping[str, ModelSummary],
                        target: str) -> str:
    """Target vs every baseline: relative difference of test means and the paired-test p-value."""
    if not rows:
        return ""
    labels = dict((m, label) for label, m in TABLE_METRICS)
    metrics = list(dict.fromkeys(r.metric for r in rows))
    lines = ["| Baseline | " + " | ".join(labels.get(m, m) for m in metrics) + " |",
             "|---|" + "|".join("---:" for _ in metrics) + "|"]
    for baseline in dict.fromkeys(r.baseline for r in rows):
        cells = [baseline]
        for metric in metrics:
            row = next(r for r in rows if r.baseline == baseline and r.metric == metric)
            if row.relative is None:
                cells.append(DASH)
            else:
                cells.append(f"{100 * row.relative:+.2f}% ({_p_text(row.p)}, n={len(row.seeds)})")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Against the best baseline of each metric (highest mean test value):")
    lines.append("")
    for metric in metrics:
        name = best_baseline(summaries, target, metric)
        row = next((r for r in rows if r.baseline == name and r.metric == metric), None)
        if row is None or row.relative is None:
            lines.append(f"- {labels.get(metric, metric)}: {DASH}")
            continue
        lines.append(f"- {labels.get(metric, metric)}: {name}, {target} {row.target_mean:.4f} vs "
                     f"{row.baseline_mean:.4f}, {100 * row.relative:+.2f}% ({_p_text(row.p)}, n={len(row.seeds)})")
    return "\n".join(lines) + "\n"


def selection_markdown(summaries: Mapping[str, ModelSummary], models: Sequence[str]) -> str:
    """Which configuration each model got, on which validation value, out of how many."""
    lines = ["| Model | chosen configuration | valid metric (mean) | configurations with results | best epoch per seed |",
             "|---|---|---:|---:|---|"]
    for model in models:
        summary = summaries[model]
        chosen = summary.selected
        if chosen is None:
            lines.append(f"| {model} | {DASH} | {DASH} | 0 | {DASH} |")
            continue
        config = json.dumps(chosen.config, sort_keys=True, default=str) if chosen.config else "MMRec defaults"
        epochs = ", ".join(f"{s}: {chosen.best_epoch.get(s)}"
                           + (f" of {chosen.cap.get(s)} {CAPPED}" if chosen.capped.get(s) else "")
                           for s in chosen.seeds)
        valid = chosen.mean("valid", summary.valid_metric)
        lines.append(f"| {model} | `{config}` | {summary.valid_metric} {_fmt(valid)} | "
                     f"{len(summary.configs)} | {epochs} |")
    return "\n".join(lines) + "\n"


def failures_markdown(summaries: Mapping[str, ModelSummary], models: Sequence[str]) -> str:
    lines = []
    for model in models:
        for record in summaries[model].failed:
            message = (record.get("message") or "failed").replace("\n", " ").replace("|", "/")
            lines.append(f"- {model} seed {record.get('seed')} "
                         f"`{json.dumps(record.get('config') or {}, sort_keys=True, default=str)}`: "
                         f"{message} (log: {record.get('log_path')})")
    return "\n".join(lines) + ("\n" if lines else "")


def host_fixes_markdown(summaries: Mapping[str, ModelSummary], models: Sequence[str]) -> str:
    """One line per reported model whose selected runs needed the runner's host fixes (e.g. DRAGON on
    CPU), so a reader knows these numbers come from a patched-in-memory MMRec model."""
    lines = []
    for model in models:
        chosen = summaries[model].selected
        if chosen is None or not chosen.host_fixes:
            continue
        fixes = sorted({fix for seed_fixes in chosen.host_fixes.values() for fix in seed_fixes})
        seeds = ", ".join(str(seed) for seed in sorted(chosen.host_fixes))
        lines.append(f"- {model} (seeds {seeds}): {'; '.join(fixes)}")
    return "\n".join(lines) + ("\n" if lines else "")


def report_markdown(dataset: str, summaries: Mapping[str, ModelSummary], models: Sequence[str],
                    comparisons: Sequence[PairedComparison], target: Optional[str], settings: str) -> str:
    """The whole ``table2.md``."""
    order = row_order(models, target)
    parts = [f"# Table 2 layout: {dataset}\n", settings.rstrip() + "\n",
             "Test split, mean ± sample std over seeds; configurations chosen on validation only.",
             "Best of our numbers per column in bold, second best underlined.\n",
             table2_markdown(dataset, summaries, models, target)]
    if target in summaries and comparisons:
        parts += [f"\n## {target} against each baseline\n",
                  f"Relative difference of the test means, {target} minus baseline; paired two-sided t-test "
                  "over the seeds both finished (n/a with fewer than 2).\n",
                  comparison_markdown(comparisons, summaries, target)]
    parts += ["\n## Chosen configurations\n", selection_markdown(summaries, order)]
    fixes = host_fixes_markdown(summaries, order)
    if fixes:
        parts += ["\n## Host fixes applied by the runner\n",
                  "MMRec models that fail as shipped in this environment ran with the runner's in-memory "
                  "fix (docs/experiments.md; `MMREC_REARM_HOST_FIXES=0` turns it off):\n", fixes]
    failures = failures_markdown(summaries, order)
    if failures:
        parts += ["\n## Failed runs\n", failures]
    return "\n".join(parts)


def table2_csv(dataset: str, summaries: Mapping[str, ModelSummary], models: Sequence[str],
               target: Optional[str] = "REARM") -> str:
    """One row per model: means and stds (6 decimals), the paper's value, seeds, the chosen config."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["model", "seeds"]
    for label, _ in TABLE_METRICS:
        header += [label, f"{label}_std", f"{label}_paper"]
    header += ["valid_metric", "valid_mean", "config", "capped_seeds"]
    writer.writerow(header)
    for model in row_order(models, target):
        summary = summaries[model]
        chosen = summary.selected
        published = paper_row(dataset, model)
        row: List[str] = [model, str(len(chosen.seeds)) if chosen else "0"]
        for index, (_, metric) in enumerate(TABLE_METRICS):
            mean = chosen.mean("test", metric) if chosen else None
            std = chosen.std("test", metric) if chosen else None
            row += ["" if mean is None else f"{mean:.6f}", "" if std is None else f"{std:.6f}",
                    "" if published is None else f"{published[index]:.4f}"]
        valid = chosen.mean("valid", summary.valid_metric) if chosen else None
        row += [summary.valid_metric, "" if valid is None else f"{valid:.6f}",
                json.dumps(chosen.config, sort_keys=True, default=str) if chosen else "",
                " ".join(str(s) for s in chosen.seeds if chosen.capped.get(s)) if chosen else ""]
        writer.writerow(row)
    return out.getvalue()


def comparisons_csv(rows: Sequence[PairedComparison]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["target", "baseline", "metric", "n", "seeds", "target_mean", "baseline_mean",
                     "difference", "relative", "t", "p"])
    for r in rows:
        writer.writerow([r.target, r.baseline, r.metric, len(r.seeds), " ".join(map(str, r.seeds)),
                         *("" if v is None else f"{v:.6f}" for v in (r.target_mean, r.baseline_mean,
                                                                    r.difference, r.relative)),
                         "" if r.t is None else f"{r.t:.4f}", "" if r.p is None else f"{r.p:.6g}"])
    return out.getvalue()


# ------------------------------------------------------------------------------------------------
# Variant tables (Table 3's ablations, Fig. 4's single modalities): rows are variants of one model

#: row label -> {column label (``R@20``): published value}; a column without any value gets no
#: "(paper)" column, a row without its value shows a dash.
PaperColumns = Mapping[str, Mapping[str, float]]


def _paper_labels(paper: PaperColumns) -> List[str]:
    present = {label for values in paper.values() for label in values}
    return [label for label, _ in TABLE_METRICS if label in present]


def variants_markdown(labels: Sequence[str], summaries: Mapping[str, ModelSummary],
                      paper: Optional[PaperColumns] = None, first: str = "Variant") -> str:
    """One row per variant (``labels`` in order, ``summaries`` keyed by label) in the Table 2 cell
    format (test ``mean ± std`` over seeds, best bold, second underlined); a published value follows
    each of our columns that the paper reports (Table 3: R@20 and N@20 only)."""
    paper = paper or {}
    with_paper = _paper_labels(paper)
    lines = _table_head(first, with_paper)
    ranks = {metric: _ranks(summaries, labels, metric) for _, metric in TABLE_METRICS}
    for name in labels:
        summary = summaries[name]
        cells = [name + (f" {CAPPED}" if _capped(summary) else "")]
        for label, metric in TABLE_METRICS:
            text = _cell(summary, metric)
            rank = ranks[metric].get(name)
            cells.append(f"**{text}**" if rank == 1 else f"<u>{text}</u>" if rank == 2 else text)
            if label in with_paper:
                cells.append(_fmt(paper.get(name, {}).get(label)))
        cells.append(str(len(summary.selected.seeds)) if summary.selected else "0")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + _capped_footer([summaries[n] for n in labels])


def variants_csv(labels: Sequence[str], summaries: Mapping[str, ModelSummary],
                 paper: Optional[PaperColumns] = None, names: Optional[Mapping[str, str]] = None) -> str:
    """One row per variant: ``variant`` (``names[label]``, default the label), ``label``, seeds, each
    metric's mean, std (6 decimals) and published value (blank when none), the validation mean and
    the chosen configuration."""
    paper = paper or {}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["variant", "label", "seeds"]
    for label, _ in TABLE_METRICS:
        header += [label, f"{label}_std", f"{label}_paper"]
    header += ["valid_metric", "valid_mean", "config"]
    writer.writerow(header)
    for name in labels:
        summary = summaries[name]
        chosen = summary.selected
        row: List[str] = [(names or {}).get(name, name), name, str(len(chosen.seeds)) if chosen else "0"]
        for label, metric in TABLE_METRICS:
            mean = chosen.mean("test", metric) if chosen else None
            std = chosen.std("test", metric) if chosen else None
            published = paper.get(name, {}).get(label)
            row += ["" if mean is None else f"{mean:.6f}", "" if std is None else f"{std:.6f}",
                    "" if published is None else f"{published:.4f}"]
        valid = chosen.mean("valid", summary.valid_metric) if chosen else None
        row += [summary.valid_metric, "" if valid is None else f"{valid:.6f}",
                json.dumps(chosen.config, sort_keys=True, default=str) if chosen else ""]
        writer.writerow(row)
    return out.getvalue()
