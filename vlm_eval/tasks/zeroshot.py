"""Zero-shot image classification of a CLIP encoder: the task type and the classifier.

The classifier follows OpenAI's zero-shot recipe (CLIP paper, `notebooks/Prompt_Engineering_for_
ImageNet.ipynb`): each class's weight is the mean of the L2-normalised text embeddings of every
template filled with the class name, re-normalised; the logits are
`logit_scale.exp() * normalised image embedding @ class weights.T`. Pixels enter in [0, 1] and are
mean/std normalised inside `forward`, so an attack perturbs [0, 1] pixels, as for the VLMs.

Programmatic use:

    classifier, _ = load_zeroshot_classifier(encoder_card, class_names, ["a photo of a {}."])
    logits = classifier(pixels)  # pixels (B, 3, H, W) in [0, 1], e.g. from preprocess_clip_image
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlm_eval.cards import EncoderCard
from vlm_eval.data.images import CLIP_MEAN, CLIP_STD
from vlm_eval.errors import CardError

TOP_K = 5  # predictions listed per sample
TEXT_BATCH = 256  # texts per text-tower forward when building class weights


class ZeroShot:
    """Zero-shot task type: the class with the highest logit is the prediction; accuracy x100."""

    metric = "accuracy"

    def __init__(self, card: Any, options: dict[str, Any]):
        self.card = card
        problem = template_problem(card.templates)
        if problem:
            raise CardError(f"task card {card.card_path}: field `templates`: {problem}")
        self.templates = tuple(card.templates)

    def check_requirements(self) -> None:
        pass

    def classes(self, files: dict[str, Path]) -> list[Any]:
        """The task's classes (`ImageClass`: index, folder, name) in label order."""
        from vlm_eval.data import read_class_index

        if "class_index_json" not in files:
            raise CardError(f"task card {self.card.card_path}: a zeroshot task needs `class_index_json` under `files`")
        return read_class_index(files["class_index_json"])

    def records(self, samples: Sequence[Any], logits: torch.Tensor, classes: Sequence[Any]) -> list[dict]:
        """One result record per sample from its row of logits (score 100 if right, else 0)."""
        from vlm_eval.data.imagefolder import label_folder

        label_of = {c.folder: c.index for c in classes}
        ranked = logits.float().topk(min(TOP_K, len(classes)), dim=-1).indices.tolist()
        records = []
        for sample, top in zip(samples, ranked):
            label = label_of[label_folder(sample)]
            records.append({
                "id": sample.id, "image": str(sample.image_path),
                "label": classes[label].name, "prediction": classes[top[0]].name,
                "score": 100.0 if top[0] == label else 0.0,
                "top5": [classes[i].name for i in top], "label_index": label, "prediction_index": top[0],
            })
        return records

    def metrics(self, records: list[dict], n_classes: int) -> dict[str, float]:
        """Accuracy (mean per-sample score, x100), chance level (100 / n_classes) and n_classes."""
        accuracy = sum(r["score"] for r in records) / len(records) if records else float("nan")
        return {"accuracy": accuracy, "chance": 100.0 / n_classes, "n_classes": n_classes}

    def options(self) -> dict[str, Any]:
        return {"templates": list(self.templates)}


def template_problem(templates: Sequence[str]) -> str | None:
    """What is wrong with a list of zero-shot templates, or None: each must hold exactly one `{}`."""
    if not templates:
        return 'no templates; give at least one, e.g. ["a photo of a {}."]'
    for template in templates:
        if not isinstance(template, str) or "{}" not in template:
            return f"template {template!r} has no {{}} for the class name"
        try:
            template.format("x")
        except (IndexError, KeyError, ValueError) as exc:
            return f"template {template!r} is not a format string with one {{}} ({type(exc).__name__}: {exc})"
    return None


class ZeroShotClassifier(nn.Module):
    """Image pixels in [0, 1] -> class logits; frozen and in eval mode.

    Args:
        model_or_visual: an open_clip CLIP (its `visual` is kept) or a vision tower itself.
        class_weights: (n_classes, embed_dim) unit-norm rows, from `class_weights`.
        logit_scale: the CLIP's learnt log temperature (`model.logit_scale`, before `.exp()`).
        image_size: input side in pixels; by default the tower's own `image_size`.
    """

    def __init__(self, model_or_visual: nn.Module, class_weights: torch.Tensor, logit_scale: torch.Tensor | float,
                 image_size: int | None = None):
        super().__init__()
        self.visual = getattr(model_or_visual, "visual", model_or_visual)
        device = class_weights.device
        self.register_buffer("class_weights", class_weights.detach().float().clone())
        self.register_buffer("logit_scale", torch.as_tensor(logit_scale).detach().float().clone().reshape(()).to(device))
        self.register_buffer("mean", torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1))
        size = image_size or getattr(self.visual, "image_size", None)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.requires_grad_(False)
        self.eval()

    @property
    def n_classes(self) -> int:
        return self.class_weights.shape[0]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> (B, n_classes) float32 logits (differentiable in `pixels`)."""
        x = (pixels.float() - self.mean.float()) / self.std.float()
        x = x.to(next(self.visual.parameters()).dtype)  # the tower may run in fp16 / bf16
        features = F.normalize(self.visual(x).float(), dim=-1)
        return self.logit_scale.float().exp() * features @ self.class_weights.float().T


@torch.no_grad()
def class_weights(model: nn.Module, tokenize: Any, class_names: Sequence[str], templates: Sequence[str],
                  batch_size: int = TEXT_BATCH) -> torch.Tensor:
    """(n_classes, embed_dim) unit-norm class weights: the re-normalised mean of the normalised
    embeddings of every template filled with the class name (OpenAI's recipe).

    The model is put in eval mode for the encoding and left in the mode it was in.
    """
    problem = template_problem(templates)
    if problem:
        raise ValueError(problem)
    if not class_names:
        raise ValueError("no class names")
    texts = [template.format(name) for name in class_names for template in templates]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        chunks = [model.encode_text(tokenize(texts[i : i + batch_size]).to(device)) for i in range(0, len(texts), batch_size)]
    finally:
        model.train(was_training)
    embeddings = F.normalize(torch.cat(chunks).float(), dim=-1).view(len(class_names), len(templates), -1)
    return F.normalize(embeddings.mean(dim=1), dim=-1)


def load_zeroshot_classifier(card: EncoderCard, class_names: Sequence[str], templates: Sequence[str],
                             weights_dir: Path | None = None, allow_download: bool = False,
                             device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                             ) -> tuple[ZeroShotClassifier, Any]:
    """Load a card's whole CLIP and tokenizer and build its zero-shot classifier on `device`.

    Returns:
        (classifier, the `LoadedClip` with its checkpoint and sha256 for provenance).

    Raises:
        The errors of `load_openclip_clip` and `load_text_tokenizer` (CardError, MissingResourceError,
        CheckpointError), and ValueError for empty class names or bad templates.
    """
    from vlm_eval.encoders.openclip_family import load_openclip_clip
    from vlm_eval.encoders.text import load_text_tokenizer

    tokenize = load_text_tokenizer(card)
    loaded = load_openclip_clip(card, weights_dir, allow_download)
    model = loaded.model.to(device=device, dtype=dtype)
    weights = class_weights(model, tokenize, class_names, templates)
    return ZeroShotClassifier(model.visual, weights, model.logit_scale, loaded.image_size), loaded
