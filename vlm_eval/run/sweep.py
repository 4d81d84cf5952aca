"""`python -m vlm_eval sweep SWEEP.yaml`: a grid of runs, one folder per cell, that can always be rerun.

    output_dir: results/mini-robust   # the sweep folder; cells go in <output_dir>/<cell name>
    config:                           # what every cell shares: the options of --config
      vlm: mini-llava
      task: mini-coco
      attack: apgd
    grid:                             # each combination is a cell (any option: encoder, task, eps, attack, ...)
      encoder: [mini-clip, mini-fare4]
      eps: [2/255, 4/255]

Cells are named by their grid values (`encoder=mini-fare4__eps=4_255`). Rerunning the sweep skips
finished cells and resumes started ones; with `--shard i/n` each process is shard i of every cell's
run. Cells that share a VLM run one after another with it loaded once (their encoders swapped in).
A failed cell is reported and the others still run. `table` and `plot` read the sweep folder.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from vlm_eval import results
from vlm_eval.config import EvalConfig, config_values
from vlm_eval.errors import VlmEvalError
from vlm_eval.run.shard import Shard

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"  # the sweep as given, in its folder: a rerun with another grid is refused


@dataclass(frozen=True)
class Sweep:
    output_dir: Path
    config: dict
    grid: dict[str, list]

    def cells(self) -> list[tuple[str, EvalConfig]]:
        """(folder name, config) of every cell, those sharing a VLM next to each other."""
        keys = sorted(self.grid, key=lambda key: key != "vlm")
        cells = []
        for values in itertools.product(*(self.grid[key] for key in keys)):
            chosen = dict(zip(keys, values))
            name = "__".join(f"{key}={_safe(value)}" for key, value in chosen.items())
            config = EvalConfig(**{**self.config, **chosen, "output_dir": str(self.output_dir / name)})
            cells.append((name, config))
        return cells


def _safe(value: object) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(value))


def load_sweep(path: Path) -> Sweep:
    """The sweep file, checked: options known, grid values non-empty lists."""
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise VlmEvalError(f"sweep file {path}: no such file") from None
    except yaml.YAMLError as exc:
        raise VlmEvalError(f"sweep file {path}: not valid YAML ({exc})") from None
    if not isinstance(spec, dict) or set(spec) - {"output_dir", "config", "grid"} or "grid" not in spec:
        raise VlmEvalError(f"sweep file {path}: expected the keys output_dir, config (optional) and grid")
    if not spec.get("output_dir"):
        raise VlmEvalError(f"sweep file {path}: set output_dir, the folder of the sweep's runs")
    grid, known = spec["grid"], {f.name for f in fields(EvalConfig)} - {"output_dir"}
    if not isinstance(grid, dict) or not grid or any(not isinstance(v, list) or not v for v in grid.values()):
        raise VlmEvalError(f"sweep file {path}: grid maps options to non-empty lists (encoder: [fare4, tecoa4])")
    unknown = sorted(set(grid) - known)
    if unknown:
        raise VlmEvalError(f"sweep file {path}: unknown grid option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    config = config_values(spec.get("config") or {}, f"sweep file {path}, config")
    if "output_dir" in config:
        raise VlmEvalError(f"sweep file {path}: the cells' folders go in the sweep's output_dir; drop config.output_dir")
    grid = {key: [str(v) if key == "eps" else v for v in values] for key, values in grid.items()}
    return Sweep(Path(spec["output_dir"]), config, grid)


def run_sweep(sweep: Sweep, shard: Shard = Shard()) -> tuple[list[Path], list[str]]:
    """Run every cell not finished yet; (finished cell folders, failures as 'cell: error')."""
    from vlm_eval.run.models import keeping_vlm_loaded
    from vlm_eval.run.runner import complete

    sweep.output_dir.mkdir(parents=True, exist_ok=True)
    _record(sweep)
    done, failed = [], []
    with keeping_vlm_loaded():
        for name, config in sweep.cells():
            try:
                done.append(complete(config, shard))
            except VlmEvalError as exc:
                log.error("sweep: %s failed: %s", name, exc)
                failed.append(f"{name}: {exc}")
    return done, failed


def _record(sweep: Sweep) -> None:
    """Write the sweep's definition into its folder once; another sweep there is refused."""
    text = json.dumps({"config": sweep.config, "grid": sweep.grid}, indent=2) + "\n"
    path = sweep.output_dir / SWEEP_FILE
    if not results.create_once(path, text) and json.loads(path.read_text()) != json.loads(text):
        raise VlmEvalError(f"{sweep.output_dir} holds another sweep ({path}); rerun that one, or choose another "
                           "output_dir (cells of the same options keep their folders, so a grown grid is a new sweep)")
