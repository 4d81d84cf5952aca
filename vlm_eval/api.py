"""The toolkit as a library: load a VLM or an encoder by card name, caption or attack images, run an evaluation.

    import vlm_eval
    vlm = vlm_eval.load_vlm("mini-llava", encoder="mini-fare4")
    captions = vlm_eval.generate(vlm, images)
    adversarial = vlm_eval.attack(vlm, images, captions, eps="4/255", steps=100)
    result = vlm_eval.evaluate(vlm="mini-llava", encoder="mini-fare4", task="mini-coco", attack="apgd")

Names resolve exactly as on the command line (cards, aliases, checkpoint paths, hf-hub: ids), so a library
call and a CLI run of the same settings load the same weights. docs/library.md has runnable examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from vlm_eval import cards
from vlm_eval.config import EvalConfig, resolve_precision
from vlm_eval.contracts import VLM, Batch, ImageEncoder

if TYPE_CHECKING:
    import torch
    from PIL import Image


def load_encoder(name: str, *, arch: str = EvalConfig.encoder_arch, weights_dir: str | Path | None = None,
                 allow_download: bool = False) -> ImageEncoder:
    """A CLIP vision tower by card name or alias ("fare4"), checkpoint path or hf-hub: id."""
    from vlm_eval.run.plan import encoder_card, encoder_family

    card = encoder_card(name, arch)
    return encoder_family(card).load_vision(card, Path(weights_dir) if weights_dir else None, allow_download)


def load_vlm(name: str, encoder: str | None = "openai", *, device: str = "auto", precision: str = "auto",
             resolution: int = 224, weights_dir: str | Path | None = None, allow_download: bool = False) -> VLM:
    """A VLM with `encoder` swapped in (None, or resolution 336 for LLaVA: its own tower). Precision "auto" is
    fp16 on a GPU and fp32 on the CPU, as for runs."""
    from vlm_eval.run.models import torch_dtype
    from vlm_eval.run.plan import resolve_device, vlm_family

    card = cards.load_card("vlms", name)
    family = vlm_family(card)
    swapped = encoder is not None and family.encoder_swapped(resolution, encoder)
    tower = load_encoder(encoder, weights_dir=weights_dir, allow_download=allow_download) if swapped else None
    device = resolve_device(device)
    return family.load(card, tower, torch_dtype(resolve_precision(precision, device)), device, allow_download)


def pixels_of(vlm: VLM, images: torch.Tensor | Sequence[Image.Image]) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1]: PIL images cut to the VLM's geometry, or a tensor as given."""
    import torch

    if isinstance(images, torch.Tensor):
        return images
    return torch.stack([vlm.preprocess(image.convert("RGB")) for image in images])


def batch_of(vlm: VLM, pixels: torch.Tensor, kind: str, question: str | None) -> Batch:
    ids = [str(i) for i in range(len(pixels))]
    return Batch(ids, pixels.to(vlm.device), [vlm.prompt(kind, question)] * len(pixels), kind)


def generate(vlm: VLM, images: torch.Tensor | Sequence[Image.Image], kind: str = "caption",
             question: str | None = None, max_new_tokens: int = 20) -> list[str]:
    """The VLM's answer per image: a caption (kind "caption"), or the answer to `question` (kind "vqa")."""
    import torch

    with torch.no_grad():
        return vlm.generate(batch_of(vlm, pixels_of(vlm, images), kind, question), max_new_tokens)


def attack(vlm: VLM, images: torch.Tensor | Sequence[Image.Image], texts: Sequence[str], *, eps: str | float = "4/255",
           norm: str = "linf", steps: int = 100, targeted: bool = False, kind: str = "caption",
           question: str | None = None) -> torch.Tensor:
    """APGD on the images, each within `eps` of its own: away from each image's text (untargeted: the loss of
    `texts` maximised), or towards it (targeted: minimised). Returns the adversarial pixels, (B, 3, S, S)."""
    from vlm_eval.attacks.apgd import apgd
    from vlm_eval.attacks.threat import ThreatModel

    threat = ThreatModel.parse(eps, norm)
    batch = batch_of(vlm, pixels_of(vlm, images), kind, question)
    return apgd(vlm.loss_closure(batch, list(texts)), batch.pixels, threat, steps, maximize=not targeted).x_adv


@dataclass
class Result:
    """A finished evaluation: its run folder and its summary.json."""

    run_dir: Path
    summary: dict[str, Any]

    @property
    def metrics(self) -> dict[str, float | None]:
        return self.summary["metrics"]

    @property
    def intervals(self) -> dict[str, list[float]]:
        return self.summary.get("intervals", {})


def evaluate(**options: Any) -> Result:
    """One run, with the command line's options as keyword arguments (EvalConfig's fields: vlm, encoder, task,
    n_samples, attack, eps, steps, output_dir, ...); the run folder is written as the CLI writes it."""
    import json

    from vlm_eval.run import run

    run_dir = run(EvalConfig(**options))
    return Result(run_dir, json.loads((run_dir / "summary.json").read_text()))
