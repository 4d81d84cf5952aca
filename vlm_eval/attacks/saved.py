"""Adversarial images kept per sample, losslessly (float32 safetensors), to re-score or transfer them.

A run with `--attack` writes `adversarial/<sample id>.safetensors` into its folder; a later run with
`--from-adversarial RUN_DIR` evaluates another model (or the same one again) on those images
instead of attacking, optionally after rounding them to 8 bits as a PNG would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlm_eval.errors import MissingResourceError

FOLDER = "adversarial"


def adversarial_file(run_dir: Path, sample_id: str) -> Path:
    return Path(run_dir) / FOLDER / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', str(sample_id))}.safetensors"


def save_adversarial(run_dir: Path, ids: list[str], pixels: torch.Tensor) -> None:
    from safetensors.torch import save_file

    (Path(run_dir) / FOLDER).mkdir(exist_ok=True)
    for sample_id, image in zip(ids, pixels):
        save_file({"pixels": image.detach().float().cpu().contiguous()}, str(adversarial_file(run_dir, sample_id)))


def quantize_8bit(pixels: torch.Tensor) -> torch.Tensor:
    """What saving as an 8-bit PNG and loading again does to [0, 1] pixels."""
    return (pixels * 255).round() / 255


@dataclass(frozen=True)
class SavedAdversarial:
    """Stands in for an attack: the adversarial images another run saved."""

    source: Path
    quantize: bool = False
    name = "from-adversarial"
    targeted = False

    def __post_init__(self) -> None:
        if not (self.source / FOLDER).is_dir():
            raise MissingResourceError(f"--from-adversarial {self.source}: no {FOLDER}/ folder there; "
                                       "give the folder of a run made with --attack")

    def check(self, ids: list[str]) -> None:
        """Fail before any work if a sample has no saved image."""
        missing = [i for i in ids if not adversarial_file(self.source, i).is_file()]
        if missing:
            raise MissingResourceError(
                f"--from-adversarial {self.source}: no adversarial image for {len(missing)} of {len(ids)} samples "
                f"(first: {missing[0]}); use the task, --n-samples and --seed of the run that saved them")

    def load(self, ids: list[str]) -> torch.Tensor:
        from safetensors.torch import load_file

        pixels = torch.stack([load_file(str(adversarial_file(self.source, i)))["pixels"] for i in ids])
        return quantize_8bit(pixels) if self.quantize else pixels

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": str(self.source), "quantize_8bit": self.quantize}
