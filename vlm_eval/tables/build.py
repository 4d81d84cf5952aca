"""`python -m vlm_eval table`: the papers' tables, from finished run folders (nothing is rerun).

Per task, one row per (VLM, encoder) (per encoder for zero-shot): the clean score, then per eps the robust
score (per sample the worse of clean and attacked: the FARE paper's ensemble number) and, where single
attacks ran, the score of their attacked outputs alone ("attacked": the number RobustVLM's `--attack apgd`
prints). Targeted runs get their own table: the success rate per (target, eps). Each cell keeps its run: the
bootstrap interval and the number of samples it was scored on; a cell scored on other samples than its row's
clean score is marked (`Cell.other_samples`) and explained in a note.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from vlm_eval import cards
from vlm_eval.errors import VlmEvalError
from vlm_eval.results import read_summary

log = logging.getLogger(__name__)

METRIC_NAMES = {"cider": "CIDEr", "vqa_accuracy": "VQA accuracy", "accuracy": "accuracy"}  # the tasks' main metrics
SUCCESS_RATE = "target success rate (%)"


@dataclass(frozen=True)
class Run:
    """What the tables and plots need from one finished run folder."""

    path: Path
    task: str
    vlm: str | None  # None: zero-shot classification, the encoder alone
    encoder: str  # "native": LLaVA's own vision tower
    metric: str
    metrics: dict[str, float | None]
    attack: dict[str, Any] | None  # None: a clean run
    n_samples: int | None
    random_weights: bool
    intervals: dict[str, list[float]] = field(default_factory=dict)  # metric -> its bootstrap interval
    samples: str = ""  # which samples were scored: runs with other values scored other samples

    @property
    def row(self) -> tuple[str, ...]:
        return (self.encoder,) if self.vlm is None else (self.vlm, self.encoder)

    @property
    def row_names(self) -> tuple[str, ...]:
        return ("encoder",) if self.vlm is None else ("VLM", "encoder")

    @property
    def targeted(self) -> bool:
        return self.attack is not None and self.attack.get("name") == "targeted"

    @property
    def untargeted(self) -> bool:
        return self.attack is not None and self.attack.get("name") != "targeted"

    @property
    def source(self) -> str:
        """For notes: which folder, on how many samples (runs on different subsets disagree)."""
        return f"{self.path.name}, {self.n_samples} samples"

    @property
    def attack_text(self) -> str:
        """E.g. "apgd 4/255" or "pgd l2 0.5": which attack, how strong."""
        if self.attack is None:
            return "clean"
        norm = "" if self.attack.get("norm", "linf") == "linf" else f" {self.attack['norm']}"
        return f"{self.attack.get('name')}{norm} {_eps_text(self.attack)}"


@dataclass(frozen=True)
class Cell:
    """One number of a table and the run it comes from."""

    value: float
    run: Run
    metric: str  # its key in the run's metrics
    other_samples: bool = False  # scored on other samples than its row's clean score

    @property
    def interval(self) -> list[float] | None:
        return self.run.intervals.get(self.metric)

    @property
    def n(self) -> int | None:
        return self.run.n_samples


def cell_of(run: Run, metric: str) -> Cell | None:
    value = run.metrics.get(metric)
    return None if value is None else Cell(value, run, metric)


@dataclass(frozen=True)
class Column:
    header: str
    eps: float  # 0 for the clean column: the x position in plots
    attacked: bool = False  # the attacked outputs alone, next to the robust column of the same eps


@dataclass
class Table:
    title: str
    kind: str  # "score" or "targeted"
    quantity: str  # what the cells hold, e.g. "CIDEr"
    row_names: tuple[str, ...]
    columns: list[Column]
    cells: dict[tuple[str, ...], list[Cell | None]]
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> dict[tuple[str, ...], list[float | None]]:
        """The numbers alone."""
        return {row: [None if cell is None else cell.value for cell in cells] for row, cells in self.cells.items()}

    def row_n(self, row: tuple[str, ...]) -> int | None:
        """The row's sample count: its clean score's (its first cell's); marked cells have their own."""
        return next((cell.n for cell in self.cells[row] if cell is not None and not cell.other_samples), None)


def find_run_dirs(path: Path) -> list[Path]:
    """[path] for a run folder; for a folder that holds runs, the finished ones below it (sorted)."""
    if not path.exists():
        raise VlmEvalError(f"{path} does not exist; give run folders or a folder that holds them")
    if (path / "summary.json").is_file() or (path / "config.json").is_file() or not path.is_dir():
        return [path]  # a run, finished or not: read_summary says what is wrong with an unfinished one
    for config in sorted(path.rglob("config.json")):
        if not (config.parent / "summary.json").is_file():
            log.warning("skipping %s: an unfinished run (finish it with python -m vlm_eval resume)", config.parent)
    runs = sorted(summary.parent for summary in path.rglob("summary.json"))
    if not runs:
        raise VlmEvalError(f"{path} is not a run folder and holds none (no summary.json in it or below); "
                           "give the folders of finished runs")
    return runs


def read_run(run_dir: Path) -> Run | None:
    """The run's table entry; None (with a warning) for a transfer run, which has no eps of its own."""
    summary = read_summary(run_dir)
    attack = summary.get("config", {}).get("resolved", {}).get("attack") or {}
    if attack.get("name") == "from-adversarial":
        log.warning("skipping %s: a transfer run (--from-adversarial) is not part of the tables", run_dir)
        return None
    try:
        resolved, metrics = summary["config"]["resolved"], summary["metrics"]
        metric = next(name for name in METRIC_NAMES if name in metrics)
        encoder = (encoder_label(resolved["encoder_card"]) + defense_label(summary.get("provenance", {}).get("defense"))
                   + rescored_label(summary.get("rescored")))
        run = Run(path=Path(run_dir), task=resolved["task_card"], vlm=resolved["vlm_card"],
                  encoder=encoder, metric=metric, metrics=metrics,
                  attack=resolved.get("attack"), n_samples=summary.get("n_samples"),
                  random_weights=bool(summary.get("provenance", {}).get("random_weights")),
                  intervals=summary.get("intervals", {}), samples=sample_set(Path(run_dir), summary))
        if run.attack is not None:
            _threat(run)  # every attack has a norm and an eps: a summary without one fails here, by name
        return run
    except StopIteration:
        raise VlmEvalError(f"{run_dir}/summary.json has none of the metrics {', '.join(METRIC_NAMES)}; "
                           "tables cover captioning, VQA and zero-shot runs") from None
    except (KeyError, TypeError) as exc:
        raise VlmEvalError(f"{run_dir}/summary.json lacks {exc}: not written by this version of vlm_eval") from None


def sample_set(run_dir: Path, summary: dict) -> str:
    """A fingerprint of the samples a run scored: its subset's ids, how many it scored (a partial merge scores
    fewer than its subset holds) and how many it skipped."""
    ids = run_dir / "subset_ids.txt"
    subset = hashlib.sha256(ids.read_bytes()).hexdigest()[:16] if ids.is_file() else "no-subset-file"
    return (f"{summary['config']['resolved']['task_card']}/{subset}/n={summary.get('n_samples')}"
            f"/skipped={summary.get('n_skipped')}")


@functools.cache  # a card is read once per process, not once per run folder
def encoder_label(name: str | None) -> str:
    """The encoder's row label: its card name and, for a robust encoder, the threat model it was trained for,
    to read next to the evaluated radii ("mini-fare4 (trained l-inf 4/255)"); "native": LLaVA's own tower."""
    if name is None:
        return "native"
    try:
        trained = cards.load_card("encoders", name).trained_eps
    except VlmEvalError:  # a checkpoint given as a path, or a card no longer there
        return name
    return f"{name} (trained l-inf {trained})" if trained else name


def defense_label(defense: dict[str, Any] | None) -> str:
    """" + ttc (adaptive, EOT 4)" or " + ttc (non-adaptive)": defended runs get rows of their own."""
    if not defense:
        return ""
    how = f"adaptive, EOT {defense['eot_samples']}" if defense["adaptive"] else "non-adaptive"
    return f" + {defense['name']} ({how})"


def rescored_label(rescored: dict[str, Any] | None) -> str:
    """" (rescored: vqa_normalize always)": a rescored run (`rescore`) is a row of its own."""
    if not rescored:
        return ""
    return " (rescored: " + ", ".join(f"{k} {'files' if k in ('data', 'data_root') else v}"
                                      for k, v in rescored["choices"].items()) + ")"


def collect(paths: Iterable[Path]) -> list[Run]:
    """The finished runs in `paths` (run folders or folders holding them), each once; transfer runs
    (--from-adversarial) are left out: the papers' tables hold white-box attacks."""
    run_dirs = [run_dir for path in paths for run_dir in find_run_dirs(Path(path))]
    return [run for run in map(read_run, dict.fromkeys(run_dirs)) if run is not None]


def build_tables(runs: list[Run]) -> list[Table]:
    """Per task (zero-shot apart): the score table, then the targeted table if it has targeted runs."""
    tables = []
    for group in _group(runs, lambda run: (run.task, run.vlm is None)).values():
        tables.append(score_table(group))
        if any(run.targeted for run in group):
            tables.append(targeted_table([run for run in group if run.targeted]))
    return tables


def score_table(runs: list[Run]) -> Table:
    """Clean, then per eps the robust score and, where single attacks ran, the attacked-only score; several
    runs in one cell: the lowest (the strongest attack)."""
    first, notes = runs[0], []
    untargeted = [run for run in runs if run.untargeted]
    keys, headers = sorted({_threat(run) for run in untargeted}), _threat_headers(untargeted)
    attacked_headers = {key: f"{header} attacked" for key, header in headers.items()}
    robust = _cells(untargeted, keys, _threat, lambda run: cell_of(run, f"{run.metric}_robust"), "lowest",
                    headers, notes)
    attacked = _cells(untargeted, keys, _threat, lambda run: cell_of(run, f"{run.metric}_attacked"), "lowest",
                      attacked_headers, notes)
    columns, picks = [Column("clean", 0.0)], []  # picks: (the cells, the key's position) of each value column
    for k, key in enumerate(keys):
        columns.append(Column(headers[key], key[1]))
        picks.append((robust, k))
        if any(cells[k] is not None for cells in attacked.values()):
            columns.append(Column(attacked_headers[key], key[1], attacked=True))
            picks.append((attacked, k))
    rows = {row: [_clean_cell(members, notes)] + [cells.get(row, [None] * len(keys))[k] for cells, k in picks]
            for row, members in _group(runs, lambda run: run.row).items()}
    name = METRIC_NAMES[first.metric]
    title = f"{first.task}{' (zero-shot)' if first.vlm is None else ''}: {name}"
    return Table(title, "score", name, first.row_names, columns, _mark_other_samples(rows, columns, notes),
                 notes + _random_note(runs))


def targeted_table(runs: list[Run]) -> Table:
    """Success rate per (target, eps); several runs in one cell: the highest (the strongest attack)."""
    notes: list[str] = []
    keys, eps_headers = sorted({_target_threat(run) for run in runs}), _threat_headers(runs)
    headers = {key: f"{key[0]} {eps_headers[key[1:]]}" for key in keys}
    rows = _cells(runs, keys, _target_threat, lambda run: cell_of(run, "target_success_rate"), "highest",
                  headers, notes)
    columns = [Column(headers[key], key[2]) for key in keys]
    return Table(f"{runs[0].task}: targeted attack, {SUCCESS_RATE}", "targeted", SUCCESS_RATE,
                 runs[0].row_names, columns, _mark_other_samples(rows, columns, notes), notes + _random_note(runs))


def _mark_other_samples(rows: dict[tuple[str, ...], list[Cell | None]], columns: list[Column],
                        notes: list[str]) -> dict[tuple[str, ...], list[Cell | None]]:
    """Mark each cell scored on other samples than its row's first one, with a note naming both sets' sizes."""
    marked = {}
    for row, cells in rows.items():
        first = next((cell for cell in cells if cell is not None), None)
        marked[row] = [cell if cell is None or first is None or cell.run.samples == first.run.samples
                       else dataclasses.replace(cell, other_samples=True) for cell in cells]
        first_column = next((column for column, cell in zip(columns, cells) if cell is not None), None)
        for column, cell in zip(columns, marked[row]):
            if cell is not None and cell.other_samples:
                notes.append(f"† {' + '.join(row)}, {column.header}: scored on other samples (n = {cell.n}, "
                             f"{cell.run.path.name}) than the row's {first_column.header} score "
                             f"(n = {first.n}, {first.run.path.name}); the two are not comparable as they stand")
    return marked


def _cells(runs: list[Run], keys: list[tuple], key_of: Callable[[Run], tuple], cell_of: Callable[[Run], Cell | None],
           which: str, headers: dict[tuple, str], notes: list[str]) -> dict[tuple[str, ...], list[Cell | None]]:
    """Per row, one cell per column key: the `which` ("lowest" or "highest") of the runs in that cell."""
    return {row: [_pick([cell_of(run) for run in members if key_of(run) == key], which,
                        f"{' + '.join(row)}, {headers[key]}", notes) for key in keys]
            for row, members in _group(runs, lambda run: run.row).items()}


def _threat(run: Run) -> tuple[str, float]:
    return run.attack.get("norm", "linf"), round(float(run.attack["eps"]), 9)


def _target_threat(run: Run) -> tuple[str, str, float]:
    return str(run.attack.get("target")), *_threat(run)


def _eps_text(attack: dict) -> str:
    return attack.get("eps_text") or f"{attack['eps']:g}"


def _threat_headers(runs: list[Run]) -> dict[tuple[str, float], str]:
    """Column headers: the eps as written ("4/255"), with the norm only when the runs mix norms."""
    texts = {_threat(run): _eps_text(run.attack) for run in runs}
    mixed = len({norm for norm, _ in texts}) > 1
    return {key: f"{key[0]} {text}" if mixed else text for key, text in texts.items()}


def _group(runs: list[Run], key: Callable[[Run], Any]) -> dict[Any, list[Run]]:
    """The runs by `key`, in the order keys first appear."""
    groups: dict[Any, list[Run]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    return groups


def _pick(found: list[Cell | None], which: str, where: str, notes: list[str]) -> Cell | None:
    """One cell: the lowest or highest of the runs that fill it, with a note when several do."""
    scored = [cell for cell in found if cell is not None]
    if len(scored) > 1:
        each = "; ".join(f"{cell.run.attack_text} {cell.value:.1f} ({cell.run.source})" for cell in scored)
        notes.append(f"{where}: the {which} of {len(scored)} runs ({each})")
    pick = min if which == "lowest" else max
    return pick(scored, key=lambda cell: cell.value) if scored else None


def _clean_cell(runs: list[Run], notes: list[str]) -> Cell | None:
    """The clean score: a clean run's if there is one, else the first attacked run's (they all carry it)."""
    scored = [cell for cell in (cell_of(run, run.metric) for run in runs) if cell is not None]
    if not scored:
        return None
    shown = sorted(scored, key=lambda cell: cell.run.attack is not None)[0]
    if any(abs(cell.value - shown.value) > 1e-9 for cell in scored):
        each = "; ".join(f"{cell.value:.1f} ({cell.run.source})" for cell in scored)
        notes.append(f"{' + '.join(shown.run.row)}, clean: the runs disagree ({each}); shown: {shown.run.path.name}")
    return shown


def _random_note(runs: list[Run]) -> list[str]:
    random = sorted({run.path.name for run in runs if run.random_weights})
    return [f"random-weight models, meaningless scores: {', '.join(random)}"] if random else []


