"""A sweep's report: `report.md` (the points as a table, the Pareto-optimal ones marked) and
`pareto.png` (quality against p50 latency, marker area for size, the frontier drawn, the teacher and
the current student as reference marks), both written from `sweep.json` and `points.jsonl` alone, so
`kdgate distill sweep show ID` and a resumed sweep print the same thing.

    md, png = write_report(folder)              # after run_sweep
    headers, rows = table(read_points(folder / POINTS_FILE), "agreement")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distill.workbench.pareto import frontier, frontier_ids
from distill.workbench.points import POINTS_FILE, read_points, read_spec
from durablefs import write_text, write_with

REPORT_FILE, PLOT_FILE = "report.md", "pareto.png"
MARK = "★"
REFERENCE_MARKERS = {"teacher": "*", "student": "D"}  # sweep.json's references, by role
# (record field, column header, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("id", "point", "{}"),
    ("temperature", "T", "{:g}"),
    ("alpha", "α", "{:g}"),
    ("layers", "layers", "{}"),
    ("width", "width", "{}"),
    ("losses", "losses", "{}"),
    ("prune", "prune", "{:g}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("agreement", "agreement", "{:.4f}"),
    ("kl", "KL", "{:.4f}"),
    ("ece", "ECE", "{:.4f}"),
    ("calibrated_ece", "ECE cal.", "{:.4f}"),
    ("p50_ms", "p50 ms", "{:.3f}"),
    ("p99_ms", "p99 ms", "{:.3f}"),
    ("size_mb", "MB", "{:.1f}"),
    ("train_seconds", "train s", "{:.0f}"),
)


def table(
    points: Sequence[Mapping[str, Any]], quality: str = "agreement"
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows, best `quality` first; the first column marks the frontier (quality max, p50 and
    size min)."""
    on_frontier = frontier_ids(points, quality)
    ordered = sorted(points, key=lambda p: -(p.get(quality) or 0.0))
    headers = ["pareto", *(header for _, header, _ in COLUMNS)]
    rows = [
        [MARK if p["id"] in on_frontier else "", *(_cell(p, f, fmt) for f, _, fmt in COLUMNS)]
        for p in ordered
    ]
    return headers, rows


def render_markdown(
    spec: Mapping[str, Any], points: Sequence[Mapping[str, Any]], quality: str = "agreement"
) -> str:
    headers, rows = table(points, quality)
    refs = spec["references"]
    lines = [
        f"# Sweep {spec['id']}",
        "",
        f"- task `{spec['task']}`, teacher `{spec['teacher']}`, "
        f"reference student `{spec['reference'] or '-'}`",
        f"- each point trained on {spec['train_examples']} texts "
        f"({spec['fraction']:g} of the recipe's training data)"
        + ("" if spec["labelled"] else "; unlabelled data: the teacher's answers stand in for labels"),
        f"- {len(points)} of {len(spec['points'])} points done; {MARK}: on the Pareto frontier "
        f"({quality} max, p50 and size min)",
        "- latency: INT8 ONNX, batch 1, 1 thread, timed beside the reference student and scaled to its "
        "p50/p99 at the start of the sweep (drift cancels)",
        "",
        "| reference | accuracy | agreement | p50 ms | p99 ms | MB |",
        "|---|---|---|---|---|---|",
    ]
    for ref in refs.values():
        cells = [f"`{ref['ref']}`", *(_cell(ref, f, fmt) for f, fmt in _REFERENCE_CELLS)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_REFERENCE_CELLS = (
    ("accuracy", "{:.4f}"),
    ("agreement", "{:.4f}"),
    ("p50_ms", "{:.3f}"),
    ("p99_ms", "{:.3f}"),
    ("size_mb", "{:.1f}"),
)


def write_report(folder: Path, quality: str = "agreement") -> tuple[Path, Path]:
    """Writes `report.md` and `pareto.png` into the sweep's folder (atomically, as every state file)."""
    spec, points = read_spec(folder), read_points(folder / POINTS_FILE)
    write_text(folder / REPORT_FILE, render_markdown(spec, points, quality))
    figure = pareto_figure(points, spec["references"], quality)
    write_with(folder / PLOT_FILE, lambda handle: figure.savefig(handle, format="png", dpi=120))
    return folder / REPORT_FILE, folder / PLOT_FILE


def pareto_figure(points: Sequence[Mapping[str, Any]], references: Mapping[str, Any], quality: str) -> Any:
    """Quality against p50 (log scale: the teacher is ~10× slower than any student), marker area
    proportional to size, the frontier of quality and p50 drawn as a step line, the 3-objective frontier
    points outlined. Figure/canvas objects, not pyplot: no global state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    measured = [p for p in points if p.get(quality) is not None and p.get("p50_ms") is not None]
    biggest = max([p["size_mb"] for p in measured] + [1.0])
    area = [300.0 * p["size_mb"] / biggest for p in measured]
    on_frontier = frontier_ids(measured, quality)
    axes.scatter(
        [p["p50_ms"] for p in measured],
        [p[quality] for p in measured],
        s=area,
        c=["tab:orange" if p["id"] in on_frontier else "tab:blue" for p in measured],
        alpha=0.6,
        edgecolors="black",
        label="points (area: size MB; orange: Pareto-optimal)",
    )
    line = sorted(frontier(measured, quality, costs=("p50_ms",)), key=lambda p: p["p50_ms"])
    axes.step(
        [p["p50_ms"] for p in line],
        [p[quality] for p in line],
        where="post",
        color="tab:orange",
        label="frontier",
    )
    for p in measured:
        if p["id"] in on_frontier:
            axes.annotate(
                p["id"], (p["p50_ms"], p[quality]), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
    for name, ref in references.items():
        marker = REFERENCE_MARKERS.get(name, "X")
        if ref.get(quality) is not None and ref.get("p50_ms") is not None:
            axes.scatter(
                [ref["p50_ms"]],
                [ref[quality]],
                marker=marker,
                s=160,
                color="black",
                label=f"{name} {ref['ref']}",
            )
    axes.set_xscale("log")
    axes.set_xlabel("p50 latency, ms (INT8 ONNX, batch 1, 1 thread)")
    axes.set_ylabel(quality)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return figure


def _cell(record: Mapping[str, Any], field: str, fmt: str) -> str:
    value = record.get(field)
    if field == "losses":  # a point recorded before the loss axis was logits-only
        return "+".join(value or ["logits"])
    if value is None:
        return "cut" if field == "width" else "-"
    return fmt.format(value)
