"""The run folder: everything a report needs, without rerunning anything.

    RUN_DIR/config.json     the resolved configuration
    RUN_DIR/subset_ids.txt  the evaluated sample ids, in order
    RUN_DIR/samples.jsonl   one JSON object per sample: id, output, references, score, ...
    RUN_DIR/skipped.jsonl   samples that could not be evaluated, with the reason
    RUN_DIR/summary.json    schema version, config, provenance, counts and metrics (x100); attacked
                            runs add `semantic`, the semantic-preservation checks (vlm_eval.semantic)
    RUN_DIR/adversarial/    attacked runs: each sample's adversarial image, losslessly (float32
                            safetensors), which `--from-adversarial RUN_DIR` replays on another model
"""

from __future__ import annotations

import hashlib
import re
import json
import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from vlm_eval.errors import MissingResourceError, VlmEvalError
from vlm_eval.program import DISTRIBUTION
from vlm_eval.timing import WRITING, phase

if TYPE_CHECKING:
    import torch

SCHEMA_VERSION = 1
ADVERSARIAL = "adversarial"
PACKAGES = (DISTRIBUTION, "torch", "transformers", "open_clip_torch", "pycocoevalcap", "accelerate")


@phase(WRITING)
def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def partial_path(path: Path) -> Path:
    """Where `swap_in` writes before swapping (left behind only by a kill in the middle of a write)."""
    return path.with_name(path.name + ".partial")


@phase(WRITING)
def swap_in(path: Path, write: Callable[[Path], None]) -> None:
    """`write` a new version of `path` next to it, then swap it in: a crash keeps the old one whole."""
    write(partial_path(path))
    os.replace(partial_path(path), path)


def create_once(path: Path, text: str) -> bool:
    """Write `path` only if it does not exist, whole or not at all (of processes racing, one wins);
    False if it existed. The text goes to a private (hidden) file first, then is hard-linked into place."""
    private = path.with_name(f".{path.name}.{os.getpid()}.partial")
    private.write_text(text)
    try:
        os.link(private, path)
        return True
    except FileExistsError:
        return False
    finally:
        private.unlink()


def replace_jsonl(path: Path, rows: Iterable[dict]) -> None:
    swap_in(path, lambda partial: write_jsonl(partial, rows))


@phase(WRITING)
def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()


def read_summary(run_dir: Path) -> dict:
    """The summary.json of a finished run; a clear error for anything else."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        hint = " (an interrupted run: finish it with python -m vlm_eval resume)" if (Path(run_dir) / "config.json").is_file() else ""
        raise VlmEvalError(f"{run_dir} is not a finished run folder: no summary.json{hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise VlmEvalError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}); the run folder is damaged") from None


def read_jsonl(path: Path) -> tuple[list[dict], bool]:
    """(the records of a JSON-lines file, whether its last line is cut off as a kill mid-write leaves it);
    a damaged line before the last is an error."""
    lines = path.read_text().splitlines() if path.exists() else []
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise VlmEvalError(f"{path}, line {number}: not JSON; the run folder is damaged") from None
            return records, True
    return records, False


def read_samples(run_dir: Path) -> list[dict]:
    """The per-sample records of a finished run's samples.jsonl."""
    path = Path(run_dir) / "samples.jsonl"
    records, cut = read_jsonl(path)
    if cut:
        raise VlmEvalError(f"{path}, line {len(records) + 1}: not JSON; the run folder is damaged")
    return records


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision(repo: Path) -> str:
    """The commit of the toolkit's checkout, with "+dirty" when it has local changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints are ~1 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def summary(config: dict, provenance: dict, n_samples: int, n_skipped: int, metrics: dict[str, float],
            semantic: dict[str, dict[str, float]] | None = None, intervals: dict[str, list[float]] | None = None,
            bootstrap: dict[str, Any] | None = None) -> dict:
    """The summary.json object; NaN metrics (nothing scored) become null. `semantic`: the semantic-preservation
    checks of an attacked run (vlm_eval.semantic), absent from clean runs. `intervals`: per metric its bootstrap
    confidence interval [low, high], made as `bootstrap` says."""
    extra = {"semantic": semantic} if semantic else {}
    if intervals:
        extra |= {"intervals": intervals, "bootstrap": bootstrap}
    return {
        "schema_version": SCHEMA_VERSION,
        "config": config,
        "provenance": provenance,
        "n_samples": n_samples,
        "n_skipped": n_skipped,
        "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()},
        **extra,
    }


def adversarial_file(run_dir: Path, sample_id: str) -> Path:
    return Path(run_dir) / ADVERSARIAL / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', str(sample_id))}.safetensors"


@phase(WRITING)
def save_adversarial(run_dir: Path, ids: list[str], pixels: torch.Tensor) -> None:
    from safetensors.torch import save_file

    (Path(run_dir) / ADVERSARIAL).mkdir(exist_ok=True)
    for sample_id, image in zip(ids, pixels):
        save_file({"pixels": image.detach().float().cpu().contiguous()}, str(adversarial_file(run_dir, sample_id)))


class SavedAdversarial:
    """A replay source, not an attack: the adversarial images another run saved, optionally rounded to
    8 bits as a PNG would be (`--from-adversarial RUN_DIR [--quantize-8bit]`)."""

    name = "from-adversarial"

    def __init__(self, source: Path, quantize: bool = False):
        self.source, self.quantize = Path(source), quantize
        if not (self.source / ADVERSARIAL).is_dir():
            raise MissingResourceError(f"--from-adversarial {self.source}: no {ADVERSARIAL}/ folder there; "
                                       "give the folder of a run made with --attack")

    def check(self, ids: list[str]) -> None:
        """Fail before any work if a sample has no saved image."""
        missing = [i for i in ids if not adversarial_file(self.source, i).is_file()]
        if missing:
            raise MissingResourceError(
                f"--from-adversarial {self.source}: no adversarial image for {len(missing)} of {len(ids)} samples "
                f"(first: {missing[0]}); use the task, --n-samples and --seed of the run that saved them")

    def load(self, ids: list[str]) -> torch.Tensor:
        import torch
        from safetensors.torch import load_file

        from vlm_eval.data.images import quantize_8bit

        pixels = torch.stack([load_file(str(adversarial_file(self.source, i)))["pixels"] for i in ids])
        return quantize_8bit(pixels) if self.quantize else pixels

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": str(self.source), "quantize_8bit": self.quantize}
