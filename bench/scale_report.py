"""The report of bench/scale.py: tables, growth exponents, targets and the log-log plot from its JSON.

Only the standard library at import (matplotlib and mmrec_rearm.costmodel are imported where used).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional

GRAPHS = ("user_cooccurrence", "item_cooccurrence", "user_interest", "item_semantic", "fusion")
#: Targets: (users, width) -> (seconds, GiB) for the whole cold build.
TARGETS = {(1_000_000, 384): (15 * 60.0, 12.0)}
COOC_EXPONENT_TARGET = 1.3


def _slope(xs: List[float], ys: List[float]) -> Optional[float]:
    """Least-squares slope of log(y) against log(x); None with fewer than two positive points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else None


def _measured(cases: List[dict], dim: int) -> List[dict]:
    return [c for c in cases if c["dim"] == dim and "wall_s" in c.get("cold", {})]


def exponents(cases: List[dict], dim: int) -> Dict[str, Dict[str, Optional[float]]]:
    """Growth exponents of one width: wall / CPU time and peak RSS against interactions."""
    rows = _measured(cases, dim)
    nnz = [float(c["cold"]["nnz"]) for c in rows]
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for g in GRAPHS:
        out[g] = {"wall": _slope(nnz, [c["cold"]["graphs"].get(g, {}).get("wall_s", 0.0) for c in rows]),
                  "cpu": _slope(nnz, [c["cold"]["graphs"].get(g, {}).get("cpu_s", 0.0) for c in rows]),
                  "peak": _slope(nnz, [c["cold"]["graphs"].get(g, {}).get("peak_gib", 0.0) for c in rows])}
    out["build"] = {"wall": _slope(nnz, [c["cold"]["wall_s"] for c in rows]),
                    "cpu": _slope(nnz, [c["cold"]["cpu_s"] for c in rows]),
                    "peak": _slope(nnz, [c["cold"]["peak_gib"] for c in rows])}
    out["cache"] = {"wall": _slope(nnz, [c["cache"]["wall_s"] for c in rows if "wall_s" in c.get("cache", {})]),
                    "cpu": None, "peak": _slope(nnz, [c["cache"]["peak_gib"] for c in rows
                                                      if "wall_s" in c.get("cache", {})])}
    work = [c["cold"]["item_degree_sq"] for c in rows]
    out["user_cooccurrence_vs_work"] = {
        "wall": _slope(work, [c["cold"]["graphs"].get("user_cooccurrence", {}).get("wall_s", 0.0) for c in rows]),
        "cpu": _slope(work, [c["cold"]["graphs"].get("user_cooccurrence", {}).get("cpu_s", 0.0) for c in rows]),
        "peak": None}
    return out


def _fmt(value: Optional[float], spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _plot(cases: List[dict], path: Path) -> Optional[str]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed: no plot"
    fig = Figure(figsize=(12, 4.8))
    FigureCanvasAgg(fig)
    ax_t, ax_m = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    colours = dict(zip(GRAPHS + ("build",), ("C0", "C1", "C2", "C3", "C4", "k")))
    for dim, style in zip(sorted({c["dim"] for c in cases}), ("-", "--", ":")):
        rows = _measured(cases, dim)
        if not rows:
            continue
        nnz = [c["cold"]["nnz"] for c in rows]
        for g in GRAPHS + ("build",):
            if g == "build":
                wall = [c["cold"]["wall_s"] for c in rows]
                peak = [c["cold"]["peak_gib"] for c in rows]
            else:
                wall = [c["cold"]["graphs"].get(g, {}).get("wall_s", float("nan")) for c in rows]
                peak = [c["cold"]["graphs"].get(g, {}).get("peak_gib", float("nan")) for c in rows]
            kw = dict(color=colours[g], linestyle=style, marker="o", label=f"{g} ({dim}-d)")
            ax_t.plot(nnz, wall, **kw)
            ax_m.plot(nnz, peak, **kw)
        ax_t.plot(nnz, [c["cache"].get("wall_s", float("nan")) for c in rows], color="grey", linestyle=style,
                  marker="x", label=f"cache hit ({dim}-d)")
    for ax, label in ((ax_t, "wall time (s)"), (ax_m, "peak RSS while building (GiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training interactions")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=6, ncol=2)
    fig.suptitle("Graph build cost against dataset size (bench/scale.py)")
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    return None


def _estimate_section(cases: List[dict]) -> List[str]:
    """Predictions of mmrec_rearm.costmodel (what `mmrec-rearm estimate` prints) beside the measurements."""
    try:
        from mmrec_rearm import costmodel as cm
        from mmrec_rearm.graphs import GraphParams
    except ImportError as exc:  # pragma: no cover - run from the repository
        return [f"(no estimate: {exc})", ""]
    lines = ["## Estimate against measurement", "",
             "`mmrec-rearm estimate` (mmrec_rearm.costmodel) for the same counts: CPU seconds and peak RSS of the "
             "cold build (its idle-machine wall time is not comparable with these shared-machine runs).", "",
             "| users | width | CPU predicted / measured (s) | ratio | peak predicted / measured (GiB) | ratio |",
             "|---|---|---|---|---|---|"]
    for c in sorted((c for c in cases if "wall_s" in c.get("cold", {})), key=lambda c: (c["dim"], c["users_asked"])):
        cold = c["cold"]
        shape = cm.DatasetShape(n_users=cold["n_users"], n_items=cold["n_items"], n_train=cold["nnz"],
                                widths=(cold["dim"],), item_degree_sq=cold["item_degree_sq"],
                                user_degree_sq=cold["user_degree_sq"])
        p = cm.graph_build_cost(shape, GraphParams())["build"]
        mark = "~" if "user_interest_sampled" in cold else ""
        lines.append(f"| {cold['n_users']:,} | {cold['dim']} | {p['cpu_s']:.0f} / {mark}{cold['cpu_s']:.0f} | "
                     f"{p['cpu_s'] / cold['cpu_s']:.2f} | {p['peak_bytes'] / 2 ** 30:.2f} / {cold['peak_gib']:.2f} | "
                     f"{p['peak_bytes'] / 2 ** 30 / cold['peak_gib']:.2f} |")
    return lines + [""]


def write_report(results: dict, out: Path) -> None:
    cases = results.get("cases", [])
    png = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_note = _plot(cases, png) if cases else "no case measured yet"
    machine = results.get("machine", {})
    lines = [
        "# Graph build cost from 20k to 1M users", "",
        "Written by `python bench/scale.py` (see its docstring for the method). Seeded long-tail 5-core "
        "interactions (`synth.power_law_interactions`, items = users / 10, about 9 interactions per user), "
        "one seeded random float32 feature matrix per width (timing only), default `GraphParams` (REARM's "
        "Baby settings: user_knn_k=40, item_knn_k=10, uu_co_weight=0.4, ii_co_weight=0.2), one modality. "
        "Each case runs in fresh processes, one case at a time; *cold* builds into an empty cache, *cache* "
        "is a second process served from it. Peak RSS is the process's high-water mark (data included). "
        "Wall times depend on what else runs on the machine: the load average (1 min) before and after each "
        "case is listed, and CPU seconds (all threads of the process) are given beside wall seconds.", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".", "",
    ]
    for dim in sorted({c["dim"] for c in cases}):
        lines += [f"## {dim}-d features", "",
                  "| users | items | interactions | sum deg_i^2 | user co-occ. (s) | item co-occ. (s) | user interest (s) "
                  "| item semantic (s) | fusion (s) | **cold build wall (s)** | cold CPU (s) | **cold peak RSS (GiB)** "
                  "| cache hit wall (s) | cache peak RSS (GiB) | load avg before / after |",
                  "|---" * 15 + "|"]
        for c in [c for c in cases if c["dim"] == dim]:
            cold, warm = c.get("cold", {}), c.get("cache", {})
            if "wall_s" not in cold:
                lines.append(f"| {c['users_asked']:,} (asked) | | | | | | | | | {cold.get('failed', 'not run')} "
                             "| | | | | |")
                continue
            g = cold["graphs"]
            mark = "~" if "user_interest_sampled" in cold else ""
            cell = lambda name: (mark if name == "user_interest" else "") + _fmt(  # noqa: E731
                g.get(name, {}).get("wall_s"), ".1f")
            lines.append(
                f"| {cold['n_users']:,} | {cold['n_items']:,} | {cold['nnz']:,} | {cold['item_degree_sq']:.3g} | "
                + " | ".join(cell(n) for n in GRAPHS)
                + f" | **{mark}{cold['wall_s']:.1f}** | {mark}{cold['cpu_s']:.1f} | **{cold['peak_gib']:.2f}** | "
                f"{_fmt(warm.get('wall_s'), '.2f')} | {_fmt(warm.get('peak_gib'), '.2f')} | "
                f"{_fmt((c.get('load_before') or [None])[0], '.1f')} / {_fmt((c.get('load_after') or [None])[0], '.1f')} |")
        for c in _measured(cases, dim):
            s = c["cold"].get("user_interest_sampled")
            if s:
                lines.append(
                    f"\n~ {c['cold']['n_users']:,} users: the user interest graph ran {s['rows_done']} of its "
                    f"{s['tile_rows']} rows of square tiles ({s['pairs_done']:.0f} of {s['pairs_total']:.0f} tile "
                    f"pairs, {s['sampled_wall_s']:.0f} s wall, {s['sampled_cpu_s']:.0f} s CPU); its time is that "
                    f"scaled by {s['scale']:.1f} (`--sample`), everything else (and all memory) is measured in full.")
        lines += ["", "Peak RSS while each graph was built (GiB; data and the graphs built before it included) "
                  "and its CPU seconds:", "",
                  "| users | " + " | ".join(f"{n} peak / CPU" for n in GRAPHS) + " | routes |",
                  "|---" * (len(GRAPHS) + 2) + "|"]
        for c in _measured(cases, dim):
            g = c["cold"]["graphs"]
            lines.append(f"| {c['cold']['n_users']:,} | " + " | ".join(
                f"{_fmt(g.get(n, {}).get('peak_gib'))} / {_fmt(g.get(n, {}).get('cpu_s'), '.1f')}" for n in GRAPHS)
                + " | " + "; ".join(c["cold"].get("routes", [])) + " |")
        exp = exponents(cases, dim)
        lines += ["", f"Growth exponents ({dim}-d): least-squares slope of log(cost) against log(interactions) "
                  "over the sizes measured.", "",
                  "| step | wall time | CPU time | peak RSS |", "|---|---|---|---|"]
        for name, e in exp.items():
            label = ("user co-occurrence against sum deg_i^2 (its work)" if name == "user_cooccurrence_vs_work"
                     else name)
            lines.append(f"| {label} | {_fmt(e['wall'])} | {_fmt(e['cpu'])} | {_fmt(e['peak'])} |")
        lines.append("")
    lines += ["## Targets", ""]
    for (users, dim), (seconds, gib) in TARGETS.items():
        hit = [c for c in cases if c["users_asked"] == users and c["dim"] == dim and "wall_s" in c.get("cold", {})]
        if not hit:
            lines.append(f"- {users:,} users, {dim}-d: <= {seconds / 60:g} min and <= {gib:g} GiB: not measured.")
            continue
        cold = hit[0]["cold"]
        ok = cold["wall_s"] <= seconds and cold["peak_gib"] <= gib
        lines.append(f"- {users:,} users, {dim}-d: <= {seconds / 60:g} min and <= {gib:g} GiB: "
                     f"{cold['wall_s'] / 60:.1f} min, {cold['peak_gib']:.2f} GiB: **{'met' if ok else 'missed'}**.")
    for dim in sorted({c["dim"] for c in cases}):
        exp = exponents(cases, dim)
        for g in ("user_cooccurrence", "item_cooccurrence"):
            e = exp[g]["wall"]
            if e is not None:
                lines.append(f"- {g} wall-time exponent ({dim}-d) <= {COOC_EXPONENT_TARGET}: {e:.2f}: "
                             f"**{'met' if e <= COOC_EXPONENT_TARGET else 'missed'}** (CPU: {_fmt(exp[g]['cpu'])}).")
    lines += ["", f"![time and memory against interactions]({png.name})" if plot_note is None else f"({plot_note})", ""]
    lines += _estimate_section(cases)
    notes = results.get("notes")
    if notes:
        lines += ["## Notes", ""] + list(notes) + [""]
    out.write_text("\n".join(lines))
