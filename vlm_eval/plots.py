"""`python -m vlm_eval plot`: figures of finished runs, from the same run collection as the tables.

score_vs_eps: the score against eps (clean at 0) per (VLM, encoder), one panel per task, with the 95 %
bootstrap intervals as error bars; a point scored on other samples than its line's clean score is drawn
hollow and left unconnected; zero-shot panels draw the chance level.
targeted_success: the targeted attack's success rate per encoder and eps, as bars.
semantic_distributions: per attacked run, histograms of how far the attack moved each image (with the attack's
radius drawn) and how much of its meaning survived. Legends sit outside the data, each line's label gives its
sample count. Matplotlib's object API on the Agg canvas: no pyplot, no display, no global state.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Iterable

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vlm_eval.results import read_samples
from vlm_eval.tables import Cell, Run, Table, add_run_dirs_argument, build_tables, collect
from vlm_eval.program import program

SEMANTIC_FIELDS = {  # panel title -> where the per-sample value sits in record["adversarial"], and its scale
    "perturbation linf (x 1/255)": ("perturbation", "linf", 255.0),
    "perturbation l2": ("perturbation", "l2", 1.0),
    "image cosine": ("semantic", "image_cosine", 1.0),
    "image cosine to reference": ("semantic", "image_cosine_reference", 1.0),
    "output similarity": ("semantic", "output_similarity", 1.0),
    "CLIP score": ("semantic", "clip_score", 1.0),
}
BINS = 20
METADATA = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}  # no timestamps: same runs, same bytes


def panels(count: int, width: float = 5.0, height: float = 3.8, per_line: int = 3) -> tuple[Figure, list[Axes]]:
    """A figure with `count` panels, at most `per_line` side by side."""
    columns = min(count, per_line)
    lines = math.ceil(count / columns)
    figure = Figure(figsize=(width * columns, height * lines), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(lines, columns, number + 1) for number in range(count)]


def score_figure(tables: list[Table]) -> Figure | None:
    """One line per (VLM, encoder): clean at eps 0, then the robust score at each eps."""
    scores = [table for table in tables if table.kind == "score"]
    if not scores:
        return None
    figure, axes = panels(len(scores))
    for ax, table in zip(axes, scores):
        robust = [k for k, column in enumerate(table.columns) if not column.attacked]  # one line: robust per eps
        for row, cells in table.cells.items():
            points = [(table.columns[k].eps, cells[k]) for k in robust if cells[k] is not None]
            if points:
                score_line(ax, " + ".join(row), table.row_n(row), points)
        chance = {cell.run.metrics.get("chance") for cells in table.cells.values() for cell in cells if cell}
        for level in sorted(value for value in chance if value is not None):
            ax.axhline(level, color="grey", linestyle=":", label=f"chance ({level:.1f})")
        columns = [table.columns[k] for k in robust]
        ax.set_xticks([column.eps for column in columns], [column.header for column in columns])
        ax.set(title=table.title, xlabel="eps", ylabel=table.quantity)
        ax.set_ylim(bottom=0)
        _legend(ax)
    figure.supxlabel("error bars: 95 % bootstrap intervals over the samples; hollow: scored on other samples "
                     "than the line's clean score (not connected)", fontsize="small")
    return figure


def score_line(ax: Axes, name: str, n: int, points: list[tuple[float, Cell]]) -> None:
    """The line through the cells on the row's `n` samples, error bars on all, hollow markers on the others
    (labelled with their own sample counts)."""
    same = [(eps, cell) for eps, cell in points if not cell.other_samples]
    other = [(eps, cell) for eps, cell in points if cell.other_samples]
    other_n = ", ".join(str(count) for count in sorted({cell.n for _, cell in other}))
    color = None
    for group, style in ((same, {"label": f"{name} (n = {n})"}),
                         (other, {"label": f"{name}, † other samples (n = {other_n})", "linestyle": "none",
                                  "markerfacecolor": "none"})):
        if group:
            xs, ys, errors = _xy_err(group)
            color = ax.plot(xs, ys, marker="o", color=color, **style)[0].get_color()
            if errors is not None:
                ax.errorbar(xs, ys, yerr=errors, fmt="none", ecolor=color, capsize=3)


def _xy_err(points: list[tuple[float, Cell]]) -> tuple[list[float], list[float], list[list[float]] | None]:
    """x, y and the asymmetric error bars of the cells that have an interval (0 for those without)."""
    xs, ys = [eps for eps, _ in points], [cell.value for _, cell in points]
    if not any(cell.interval for _, cell in points):
        return xs, ys, None
    low = [cell.value - cell.interval[0] if cell.interval else 0.0 for _, cell in points]
    high = [cell.interval[1] - cell.value if cell.interval else 0.0 for _, cell in points]
    return xs, ys, [low, high]


def targeted_figure(tables: list[Table]) -> Figure | None:
    """Grouped bars: per (target, eps) one bar per (VLM, encoder); None without targeted runs."""
    targeted = [table for table in tables if table.kind == "targeted"]
    if not targeted:
        return None
    figure, axes = panels(len(targeted), width=6.0)
    for ax, table in zip(axes, targeted):
        width = 0.8 / len(table.rows)
        for number, (row, cells) in enumerate(table.rows.items()):
            bars = [(place - 0.4 + (number + 0.5) * width, value)
                    for place, value in enumerate(cells) if value is not None]
            if bars:
                ax.bar(*zip(*bars), width=width, label=" + ".join(row))
        ax.set_xticks(range(len(table.columns)), [tick_label(column.header) for column in table.columns])
        ax.set(title=table.title, ylabel=table.quantity, ylim=(0, 100))
        _legend(ax)
    return figure


def tick_label(header: str, width: int = 32) -> str:
    """A long target (the presets are whole sentences) cut in the middle, keeping its eps at the end."""
    return header if len(header) <= width else f"{header[:width - 12]}…{header[-11:]}"


def semantic_values(run: Run) -> dict[str, list[float]]:
    """Per SEMANTIC_FIELDS panel, the finite values of the run's attacked records (absent fields left out)."""
    values: dict[str, list[float]] = {}
    for record in read_samples(run.path):
        adversarial = record.get("adversarial") or {}
        for name, (group, key, scale) in SEMANTIC_FIELDS.items():
            value = (adversarial.get(group) or {}).get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                values.setdefault(name, []).append(scale * float(value))
    return values


def semantic_figure(runs: list[Run]) -> Figure | None:
    """One panel per measured field, one histogram per attacked run; None when no run measured any."""
    measured = [(run, semantic_values(run)) for run in runs if run.attack is not None]
    present = [name for name in SEMANTIC_FIELDS if any(name in values for _, values in measured)]
    if not present:
        return None
    figure, axes = panels(len(present), width=4.5)
    for ax, name in zip(axes, present):
        edges = shared_bins([v for _, values in measured for v in values.get(name, [])])
        for run, values in measured:
            if name in values:
                ax.hist(values[name], bins=edges, histtype="stepfilled", alpha=0.5,
                        label=f"{run_label(run)} (n = {len(values[name])})")
        if name == "perturbation linf (x 1/255)":
            for eps in sorted({255 * run.attack["eps"] for run, _ in measured if run.attack.get("norm") == "linf"}):
                ax.axvline(eps, color="black", linestyle="--", label=f"eps = {eps:g}/255")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of samples
        ax.set(title=name, xlabel=name, ylabel="samples")
        _legend(ax)
    return figure


def shared_bins(values: list[float]) -> list[float]:
    """BINS equal bins over every run's values, so that the runs' histograms line up."""
    low, high = min(values), max(values)
    if high - low < 1e-9:  # one value (e.g. every l-inf size at eps): one bin around it
        low, high = low - 0.5, high + 0.5
    return [low + (high - low) * i / BINS for i in range(BINS + 1)]


def run_label(run: Run) -> str:
    return f"{' + '.join(run.row)}, {run.task}, {run.attack_text}"


def _legend(ax: Axes) -> None:
    """Below the panel, out of the data's way."""
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=1, frameon=False)


def save_figure(figure: Figure, stem: Path, formats: Iterable[str]) -> list[Path]:
    """`stem`.png, .svg, ...: reproducible bytes (fixed SVG ids, no dates) so reruns diff cleanly."""
    paths = []
    with matplotlib.rc_context({"svg.hashsalt": "vlm_eval"}):
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            figure.savefig(path, format=fmt, metadata=METADATA[fmt])
            paths.append(path)
    return paths


def plot_runs(paths: Iterable[Path], output_dir: Path, formats: Iterable[str] = ("png", "svg")) -> list[Path]:
    """Write the figures of the runs in `paths` (run folders or folders holding them); the files written."""
    runs = collect(paths)
    tables = build_tables(runs)
    figures = {"score_vs_eps": score_figure(tables), "targeted_success": targeted_figure(tables),
               "semantic_distributions": semantic_figure(runs)}
    output_dir.mkdir(parents=True, exist_ok=True)
    return [path for name, figure in figures.items() if figure is not None
            for path in save_figure(figure, output_dir / name, formats)]


def _formats(text: str) -> list[str]:
    formats = [fmt.strip().lower() for fmt in text.split(",") if fmt.strip()]
    if not formats or any(fmt not in METADATA for fmt in formats):
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(METADATA)}, comma-separated; got {text!r}")
    return formats


def main(argv: list[str]) -> int:
    """`python -m vlm_eval plot RUN_DIR... --output-dir DIR`: write the figures, print their paths."""
    p = argparse.ArgumentParser(prog=program("plot"),
                                description="Figures of finished runs: score against eps, targeted success "
                                "rates, distributions of the semantic-preservation checks.")
    add_run_dirs_argument(p)
    p.add_argument("--output-dir", type=Path, required=True, help="folder for the figures (created if missing)")
    p.add_argument("--formats", type=_formats, default=["png", "svg"], help="comma-separated: png, svg, pdf")
    args = p.parse_args(argv)
    for path in plot_runs(args.run_dirs, args.output_dir, args.formats):
        print(path)
    return 0
