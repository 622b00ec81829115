"""``ablate``: REARM's Table 3 ablations and Fig. 4 single-modality variants, as tables.

Table 3 (Sec. 5.3.1) switches REARM's ``ablation`` key (model/presets.py ``ABLATIONS``): no user
homogeneous graph (``wo_uu``), no item homogeneous graph (``wo_ii``), no co-occurrence graphs
(``wo_co``), no similarity graphs (``wo_sim``), none of them (``wo_hom``), no meta-network
(``wo_meta``), no orthogonal constraint (``wo_ort``), neither (``wo_ref``), and the full model.
Fig. 4 (Sec. 5.3.2) trains on one modality: ``modalities: first`` (REARM_V, MMRec's vision slot)
and ``modalities: second`` (REARM_T, the text slot). Each variant is run through
:func:`.variants.run_variants` (compare's store, resume and validation-only selection) and the
results go to ``<results>/<dataset>/table3.md`` / ``.csv`` and ``fig4.md`` / ``.csv`` in the
Table 2 cell format. The paper's Table 3 values (R@20 and N@20 only) stand beside ours for Baby,
Sports and Clothing; Fig. 4 is only published as a chart, so it has no paper column.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..atomic import write_text
from ..errors import ConfigError
from .runqueue import Progress, RunFunction
from .mmrec_config import merged_config, mmrec_src
from .tables import failures_markdown, selection_markdown, variants_csv, variants_markdown
from .variants import Variant, VariantRuns, run_variants

PathLike = Union[str, "os.PathLike[str]"]
MODEL = "REARM"

FULL = Variant("full", "REARM")
#: Table 3's rows in the paper's order, the full model last.
TABLE3_VARIANTS: Tuple[Variant, ...] = tuple(
    Variant(name, label, (("ablation", name),)) for name, label in (
        ("wo_uu", "w/o uu"), ("wo_ii", "w/o ii"), ("wo_co", "w/o co"), ("wo_sim", "w/o sim"),
        ("wo_hom", "w/o hom"), ("wo_meta", "w/o meta"), ("wo_ort", "w/o ort"), ("wo_ref", "w/o ref"))
) + (FULL,)
#: Fig. 4's bars: visual only, textual only, both.
FIG4_VARIANTS: Tuple[Variant, ...] = (Variant("first", "REARM_V", (("modalities", "first"),)),
                                      Variant("second", "REARM_T", (("modalities", "second"),)), FULL)
PARTS = ("table3", "fig4")

#: Table 3 of the paper: dataset -> variant name -> (R@20, N@20).
TABLE3: Dict[str, Dict[str, Tuple[float, float]]] = {
    "baby": {"wo_uu": (0.1055, 0.0458), "wo_ii": (0.0972, 0.0420), "wo_co": (0.1057, 0.0458),
             "wo_sim": (0.0903, 0.0402), "wo_hom": (0.0926, 0.0403), "wo_meta": (0.1078, 0.0471),
             "wo_ort": (0.1079, 0.0470), "wo_ref": (0.1070, 0.0467), "full": (0.1105, 0.0479)},
    "sports": {"wo_uu": (0.1209, 0.0544), "wo_ii": (0.1011, 0.0453), "wo_co": (0.1158, 0.0511),
               "wo_sim": (0.0982, 0.0445), "wo_hom": (0.0975, 0.0437), "wo_meta": (0.1214, 0.0547),
               "wo_ort": (0.1201, 0.0548), "wo_ref": (0.1190, 0.0545), "full": (0.1231, 0.0553)},
    "clothing": {"wo_uu": (0.0984, 0.0446), "wo_ii": (0.0676, 0.0298), "wo_co": (0.0968, 0.0434),
                 "wo_sim": (0.0708, 0.0325), "wo_hom": (0.0653, 0.0290), "wo_meta": (0.0995, 0.0451),
                 "wo_ort": (0.0983, 0.0447), "wo_ref": (0.0982, 0.0446), "full": (0.0998, 0.0454)},
}


def table3_paper(dataset: str) -> Dict[str, Dict[str, float]]:
    """Row label -> {"R@20": value, "N@20": value} for ``dataset`` (case-insensitive); {} when the
    paper has no Table 3 column for it."""
    published = TABLE3.get(dataset.lower(), {})
    return {v.label: {"R@20": published[v.name][0], "N@20": published[v.name][1]}
            for v in TABLE3_VARIANTS if v.name in published}


@dataclass
class AblationReport:
    dataset: str
    runs: VariantRuns
    tables: Dict[str, List[str]]                       # part -> row labels, in order
    files: Dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.runs.failed


def select_variants(parts: Sequence[str], names: Optional[Sequence[str]] = None) -> Tuple[Variant, ...]:
    """The variants of ``parts`` (table order, the shared full model once), restricted to ``names``."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ConfigError(f"parts: {list(parts)}; choose from {', '.join(PARTS)}.")
    chosen: Dict[str, Variant] = {}
    for part in PARTS:
        if part in parts:
            for variant in TABLE3_VARIANTS if part == "table3" else FIG4_VARIANTS:
                chosen.setdefault(variant.name, variant)
    if names is not None:
        missing = [n for n in names if n not in chosen]
        if missing:
            raise ConfigError(f"variants: {missing} not among the variants of {list(parts)}: "
                              f"{', '.join(chosen)}.")
        chosen = {n: v for n, v in chosen.items() if n in names}
    return tuple(chosen.values())


def _slot_files(mmrec_dir: PathLike, dataset: str) -> Tuple[str, str]:
    config = merged_config(mmrec_src(mmrec_dir), MODEL, dataset)
    return (str(config.get("vision_feature_file") or "the vision slot"),
            str(config.get("text_feature_file") or "the text slot"))


def _report(title: str, intro: str, block: str, runs: VariantRuns, labels: Sequence[str]) -> str:
    by_label = runs.by_label()
    parts = [f"# {title}\n", runs.settings + "\n", intro.rstrip() + "\n", block,
             "\n## Chosen configurations\n", selection_markdown(by_label, labels)]
    failures = failures_markdown(by_label, labels)
    if failures:
        parts += ["\n## Failed runs\n", failures]
    return "\n".join(parts)


def ablate(mmrec_dir: PathLike, dataset: str, seeds: Union[int, Sequence[int]] = 1, epochs: Optional[int] = None,
           overrides: Sequence[str] = (), results_dir: PathLike = "results", python: str = sys.executable, *,
           parts: Sequence[str] = PARTS, variants: Optional[Sequence[str]] = None,
           data_dir: Optional[PathLike] = None, execute: bool = True, retry_failed: bool = True,
           timeout_s: Optional[float] = None, jobs: Optional[int] = None,
           devices: Optional[str] = None, progress: Optional[Progress] = print,
           run_fn: Optional[RunFunction] = None) -> AblationReport:
    """Run REARM's Table 3 and/or Fig. 4 variants on ``dataset`` and write their tables.

    Arguments as in :func:`~.compare.compare` (``overrides`` apply to every variant, but may not
    set ``ablation`` or ``modalities``). parts: ``table3``, ``fig4`` or both. variants: only these
    variant names (``wo_uu`` … ``wo_ref``, ``full``, ``first``, ``second``); the tables then show
    only the rows that were run. Writes ``table3.md``/``.csv`` and ``fig4.md``/``.csv`` under
    ``<results_dir>/<dataset>/``.
    """
    say: Progress = progress or (lambda _message: None)
    chosen = select_variants(parts, variants)
    runs = run_variants(mmrec_dir, dataset, chosen, seeds, epochs, overrides, results_dir, python, model=MODEL,
                        data_dir=data_dir, execute=execute, retry_failed=retry_failed, timeout_s=timeout_s,
                        jobs=jobs, devices=devices, progress=progress, run_fn=run_fn)
    by_label = runs.by_label()
    names = {v.label: v.name for v in chosen}
    root = Path(results_dir) / dataset
    report = AblationReport(dataset, runs, {})
    ran = {v.name for v in chosen}
    if "table3" in parts:
        labels = [v.label for v in TABLE3_VARIANTS if v.name in ran]
        paper = table3_paper(dataset)
        block = variants_markdown(labels, by_label, paper)
        intro = ("Test split, mean ± sample std over seeds; configuration chosen per variant on validation only. "
                 "Best of our numbers per column in bold, second best underlined. Rows switch REARM's "
                 "`ablation` key (w/o uu = `wo_uu`, …); REARM is the full model. "
                 + ("The paper's Table 3 reports R@20 and N@20 only; its values stand beside ours."
                    if paper else "The paper has no Table 3 numbers for this dataset."))
        report.tables["table3"] = labels
        report.files["table3.md"] = root / "table3.md"
        write_text(report.files["table3.md"], _report(f"Table 3 layout: {dataset}", intro, block, runs, labels),
                   what="Table 3")
        report.files["table3.csv"] = root / "table3.csv"
        write_text(report.files["table3.csv"], variants_csv(labels, by_label, paper, names), what="Table 3")
        say("")
        say(block.rstrip())
    if "fig4" in parts:
        labels = [v.label for v in FIG4_VARIANTS if v.name in ran]
        vision, text = _slot_files(mmrec_dir, dataset)
        block = variants_markdown(labels, by_label)
        intro = ("Test split, mean ± sample std over seeds; configuration chosen per variant on validation only. "
                 f"REARM_V uses only MMRec's vision slot (`modalities: first`, here `{vision}`), REARM_T only "
                 f"its text slot (`modalities: second`, here `{text}`), REARM both. The paper shows Fig. 4 as "
                 "a chart only, so there are no published numbers beside ours.")
        report.tables["fig4"] = labels
        report.files["fig4.md"] = root / "fig4.md"
        write_text(report.files["fig4.md"],
                   _report(f"Fig. 4 layout (single modality): {dataset}", intro, block, runs, labels), what="Fig. 4")
        report.files["fig4.csv"] = root / "fig4.csv"
        write_text(report.files["fig4.csv"], variants_csv(labels, by_label, None, names), what="Fig. 4")
        say("")
        say(block.rstrip())
    say(f"\nwrote {', '.join(str(p) for p in report.files.values())}")
    return report
