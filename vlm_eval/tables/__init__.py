"""`python -m vlm_eval table`: the papers' tables from finished run folders (`build`), rendered (`render`)."""

from vlm_eval.tables.build import Cell, Column, Run, Table, build_tables, collect, encoder_label
from vlm_eval.tables.render import (
    CI_STYLES,
    RENDERERS,
    add_run_dirs_argument,
    cell_text,
    latex_escape,
    main,
    render_latex,
    render_markdown,
    render_paper_csv,
    render_tidy_csv,
)

__all__ = ["CI_STYLES", "RENDERERS", "Cell", "Column", "Run", "Table", "add_run_dirs_argument", "build_tables",
           "cell_text", "collect", "encoder_label", "latex_escape", "main", "render_latex", "render_markdown",
           "render_paper_csv", "render_tidy_csv"]
