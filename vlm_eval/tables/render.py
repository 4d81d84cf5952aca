"""The tables as Markdown, LaTeX or CSV in the papers' layout, or as tidy CSV; `python -m vlm_eval table`.

A cell reads "61.3 ± 2.9": the score and half the width of its 95 % bootstrap interval (`--ci interval`:
"61.3 [58.5, 64.2]"; `--ci none`: the score alone). Each row gives its sample count n; a cell scored on other
samples than its row's clean score is marked † with its own n, and a note says which runs differ.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Callable, Iterable

from vlm_eval.tables.build import Cell, Run, Table, build_tables, collect
from vlm_eval.program import program

CI_STYLES = ("pm", "interval", "none")
LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}
TIDY_FIELDS = ["run", "task", "vlm", "encoder", "attack", "norm", "eps", "target", "metric", "value", "ci_low",
               "ci_high", "n_samples", "samples", "random_weights"]


def cell_text(cell: Cell | None, ci: str = "pm", missing: str = "–") -> str:
    """"61.3 ± 2.9", "61.3 [58.5, 64.2]" or "61.3"; "† (n = 16)" after a cell on other samples than its row."""
    if cell is None:
        return missing
    text = f"{cell.value:.1f}"
    if cell.interval is not None and ci == "pm":
        text += f" ± {(cell.interval[1] - cell.interval[0]) / 2:.1f}"
    elif cell.interval is not None and ci == "interval":
        text += f" [{cell.interval[0]:.1f}, {cell.interval[1]:.1f}]"
    return text + (f" † (n = {cell.n})" if cell.other_samples else "")


def ci_note(tables: list[Table], ci: str) -> list[str]:
    """What the ± or brackets mean, when some cell has an interval."""
    if ci == "none" or not any(c and c.interval for t in tables for cells in t.cells.values() for c in cells):
        return []
    what = "± half the width of" if ci == "pm" else "[low, high]:"
    return [f"{what} the 95 % bootstrap interval over the samples; n: the samples scored"]


def table_rows(table: Table, ci: str, missing: str) -> list[list[str]]:
    """Each row as text: its names, its n, its cells."""
    return [[*row, str(table.row_n(row) or ""), *(cell_text(cell, ci, missing) for cell in cells)]
            for row, cells in table.cells.items()]


def header(table: Table) -> list[str]:
    return [*table.row_names, "n", *(column.header for column in table.columns)]


def render_markdown(tables: list[Table], ci: str = "pm") -> str:
    blocks = []
    for table in tables:
        lines = [f"### {table.title}", "", _md_row(header(table)),
                 _md_row(["---"] * len(table.row_names) + ["---:"] * (len(table.columns) + 1))]
        lines += [_md_row(row) for row in table_rows(table, ci, "–")]
        notes = table.notes + ci_note([table], ci)
        blocks.append("\n".join(lines + [""] * bool(notes) + [f"- {note}" for note in notes]))
    return "\n\n".join(blocks) + "\n"


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(" ".join(cell.split()).replace("|", r"\|") for cell in cells) + " |"  # one line per row


def render_paper_csv(tables: list[Table], ci: str = "none") -> str:
    """The papers' layout: one block per table (its own header row, each row naming its table), blocks apart
    by an empty line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for number, table in enumerate(tables):
        writer.writerows([[]] * bool(number) + [["table", *header(table)]])
        writer.writerows([table.title, *row] for row in table_rows(table, ci, ""))
    return out.getvalue()


def tidy_rows(runs: list[Run]) -> list[dict[str, object]]:
    """One row per run and metric, every number with its interval and sample count (for pandas, R, a sheet)."""
    rows = []
    for run in runs:
        attack = run.attack or {}
        for metric, value in run.metrics.items():
            low, high = run.intervals.get(metric, (None, None))
            rows.append({"run": str(run.path), "task": run.task, "vlm": run.vlm or "", "encoder": run.encoder,
                         "attack": attack.get("name", "none"), "norm": attack.get("norm", ""),
                         "eps": attack.get("eps", 0.0), "target": attack.get("target") or "",
                         "metric": metric, "value": value, "ci_low": low, "ci_high": high,
                         "n_samples": run.n_samples, "samples": run.samples, "random_weights": run.random_weights})
    return rows


def render_tidy_csv(runs: list[Run]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, TIDY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(tidy_rows(runs))
    return out.getvalue()


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(char, char) for char in text)


def render_latex(tables: list[Table], ci: str = "pm") -> str:
    """booktabs tabulars; the title and notes as comments, for the caption the paper writes itself."""
    blocks = []
    for table in tables:
        spec = "l" * len(table.row_names) + "r" * (len(table.columns) + 1)
        lines = [f"% {table.title}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule", _tex_row(header(table)), r"\midrule"]
        lines += [_tex_row(row) for row in table_rows(table, ci, "--")]
        notes = table.notes + ci_note([table], ci)
        blocks.append("\n".join(lines + [r"\bottomrule", r"\end{tabular}"] + [f"% {note}" for note in notes]))
    return "\n\n".join(blocks) + "\n"


def _tex_row(cells: Iterable[str]) -> str:
    return " & ".join(latex_escape(cell).replace("±", r"$\pm$").replace("†", r"$^\dagger$") for cell in cells) + r" \\"


def add_run_dirs_argument(parser: argparse.ArgumentParser) -> None:
    """RUN_DIR..., as `collect` reads them (for `table` and `plot`)."""
    parser.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", type=Path,
                        help="a run folder, or a folder holding run folders (searched recursively)")


# format -> (runs, ci style) -> text
RENDERERS: dict[str, Callable[[list[Run], str], str]] = {
    "markdown": lambda runs, ci: render_markdown(build_tables(runs), ci),
    "csv": lambda runs, ci: render_tidy_csv(runs),
    "paper-csv": lambda runs, ci: render_paper_csv(build_tables(runs), ci),
    "latex": lambda runs, ci: render_latex(build_tables(runs), ci),
}


def main(argv: list[str]) -> int:
    """`python -m vlm_eval table RUN_DIR...`: print (or write) the tables of finished runs."""
    p = argparse.ArgumentParser(prog=program("table"),
                                description="The papers' tables (clean, robust and attacked-only scores per "
                                "eps; targeted success rates) from finished run folders.")
    add_run_dirs_argument(p)
    p.add_argument("--format", choices=list(RENDERERS), default="markdown",
                   help="markdown (default), latex and paper-csv: the papers' layout; csv: one tidy row per run "
                        "and metric")
    p.add_argument("--ci", choices=CI_STYLES,
                   help="how cells show the 95 %% bootstrap interval: pm (61.3 ± 2.9, the default), interval "
                        "(61.3 [58.5, 64.2]) or none (the default of paper-csv, whose cells stay numbers)")
    p.add_argument("--output", type=Path, help="write to this file instead of printing")
    args = p.parse_args(argv)
    ci = args.ci or ("none" if args.format == "paper-csv" else "pm")
    text = RENDERERS[args.format](collect(args.run_dirs), ci)
    if args.output is None:
        print(text, end="")
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0
