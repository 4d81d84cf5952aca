"""A fine-tuning run's folder: the recipe, the log, training-state checkpoints and the exported encoder.

    RUN_DIR/recipe.json           the recipe as run, and the base encoder's provenance
    RUN_DIR/log.jsonl             one line per step (loss, lr) and per evaluation
    RUN_DIR/state-<step>/         accelerate's state (weights, optimiser, schedule, RNG) after <step> steps
    RUN_DIR/progress.json         which state is the last complete one
    RUN_DIR/encoder.safetensors   the trained CLIP (open_clip_full), at the end
    RUN_DIR/encoder.yaml          its encoder card: `--encoder RUN_DIR` evaluates it

A state is written whole before progress.json points to it, so a kill while saving leaves the
previous one in use.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from vlm_eval import results
from vlm_eval.cards import EncoderCard
from vlm_eval.contracts import Json

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn


PROGRESS = "progress.json"
ENCODER_WEIGHTS, ENCODER_CARD = "encoder.safetensors", "encoder.yaml"


def save_state(accelerator: Accelerator, run_dir: Path, step: int) -> None:
    """Save the training state after `step` steps, then point progress.json at it and drop older states."""
    folder = run_dir / f"state-{step}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        results.swap_in(run_dir / PROGRESS, lambda partial: partial.write_text(json.dumps({"step": step})))
        for old in run_dir.glob("state-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def last_state(run_dir: Path) -> tuple[int, Path] | None:
    """(steps done, state folder) of the last complete checkpoint, or None."""
    path = run_dir / PROGRESS
    if not path.is_file():
        return None
    step = int(json.loads(path.read_text())["step"])
    return step, run_dir / f"state-{step}"


def export_encoder(clip: nn.Module, base: EncoderCard, run_dir: Path, name: str, recipe: dict[str, Json],
                   tokenizer_file: Path | None) -> Path:
    """Write the trained CLIP and its encoder card into the run folder; returns the card's path."""
    from safetensors.torch import save_file

    weights = run_dir / ENCODER_WEIGHTS
    save_file({k: v.detach().float().cpu().contiguous() for k, v in clip.state_dict().items()}, str(weights))
    tokenizer = base.tokenizer
    if tokenizer_file is not None:  # a JSON tokenizer travels with the weights
        shutil.copyfile(tokenizer_file, run_dir / tokenizer_file.name)
        tokenizer = tokenizer_file.name
    card = {
        "name": name,
        "description": f"{recipe['method']} fine-tuning of {base.name} at eps {recipe['eps']} for {recipe['steps']} "
                       f"steps of {recipe['batch_size']} (vlm_eval finetune; recipe {recipe['source']}); "
                       f"weights sha256 {results.file_sha256(weights)}",
        "family": base.family, "arch": base.arch, "trained_eps": recipe["eps"], "image_size": base.image_size,
        "source": {"path": ENCODER_WEIGHTS, "format": "open_clip_full"}, "tokenizer": tokenizer,
        "paper": recipe["method"], "original": base.original or (base.name if base.card_path else None),
    }
    if base.arch_config is not None:
        card["arch_config"] = base.arch_config
    path = run_dir / ENCODER_CARD
    path.write_text("# written by `python -m vlm_eval finetune`\n" + yaml.safe_dump(card, sort_keys=False))
    return path
