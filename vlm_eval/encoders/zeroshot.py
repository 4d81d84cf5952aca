"""A CLIP encoder as a zero-shot image classifier (OpenAI's recipe).

Each class's weight is the mean of the L2-normalised text embeddings of every template filled with
the class name, re-normalised (CLIP paper, `notebooks/Prompt_Engineering_for_ImageNet.ipynb`); the
logits are `logit_scale.exp() * normalised image embedding @ class weights.T`. Pixels enter in
[0, 1] and are mean/std normalised inside `forward`, so an attack perturbs [0, 1] pixels, as for
the VLMs.

    classifier, _ = load_zeroshot_classifier(encoder_card, class_names, ["a photo of a {}."])
    logits = classifier(pixels)  # pixels (B, 3, H, W) in [0, 1], from classifier.preprocess(image)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlm_eval.cards import EncoderCard
from vlm_eval.encoders.openclip_family import LoadedClip, load_openclip_clip
from vlm_eval.encoders.text import load_text_tokenizer
from vlm_eval.data.images import clip_normalize, preprocess_clip_image

TEXT_BATCH = 256  # texts per text-tower forward when building class weights


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
        size = image_size or getattr(self.visual, "image_size", None)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.prompts: ClassPrompts | None = None  # the text side, for attacks on the class prompts
        self.requires_grad_(False)
        self.eval()

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """CLIP's own geometry: resize the short side, centre crop (no padding)."""
        return preprocess_clip_image(image, self.image_size)

    @property
    def device(self) -> torch.device:
        return self.class_weights.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    @property
    def n_classes(self) -> int:
        return self.class_weights.shape[0]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> (B, n_classes) float32 logits (differentiable in `pixels`)."""
        features = F.normalize(self.embed(pixels), dim=-1)
        return self.logit_scale.float().exp() * features @ self.class_weights.float().T

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, D) float32 image embeddings, not normalised (what TTC measures)."""
        x = clip_normalize(pixels.float())
        x = x.to(next(self.visual.parameters()).dtype)  # the tower may run in fp16 / bf16
        return self.visual(x).float()

    def attack_logits(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return [self(pixels)]

    def logits_with(self, pixels: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Logits where each sample's own class `labels[i]` has the weight `weights[i]` (attacked prompts)."""
        return self.logits_of_features(F.normalize(self.embed(pixels), dim=-1), labels, weights)

    def logits_of_features(self, features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`logits_with` from unit image features already computed (one image, many prompt sets)."""
        scale = self.logit_scale.float().exp()
        logits = scale * features @ self.class_weights.float().T
        own = scale * (features * weights.float()).sum(-1, keepdim=True)
        return logits.scatter(1, labels[:, None], own)


@torch.no_grad()
def class_weights(model: nn.Module, tokenize: Callable[[list[str]], torch.Tensor], class_names: Sequence[str], templates: Sequence[str],
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


def load_clip_for_classes(card: EncoderCard, weights_dir: Path | None, allow_download: bool) -> LoadedClip:
    """The whole CLIP a card classifies with: its own, or, for a vision-only release that names a
    `text_tower` card, that card's CLIP with this card's vision tower in place of its own (the FARE,
    TeCoA and Sim-CLIP releases fine-tune the vision tower of OpenAI's CLIP and keep its text tower).
    The returned `card` is the one whose text tokenizer fits; checkpoint and sha256 are the vision tower's."""
    if card.text_tower is None:
        return load_openclip_clip(card, weights_dir, allow_download)
    from vlm_eval import cards
    from vlm_eval.encoders.openclip_family import load_openclip_encoder

    text_card = cards.load_card("encoders", card.text_tower)
    clip = load_openclip_clip(text_card, weights_dir, allow_download)
    vision = load_openclip_encoder(card, weights_dir, allow_download)
    clip.model.visual = vision.visual
    return LoadedClip(model=clip.model, card=text_card, checkpoint=vision.checkpoint, sha256=vision.sha256,
                      image_size=vision.image_size, context_length=clip.context_length)


def load_zeroshot_classifier(card: EncoderCard, class_names: Sequence[str], templates: Sequence[str],
                             weights_dir: Path | None = None, allow_download: bool = False,
                             device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                             ) -> tuple[ZeroShotClassifier, LoadedClip]:
    """Load a card's whole CLIP and tokenizer and build its zero-shot classifier on `device`.

    Returns:
        (classifier, the `LoadedClip` with its checkpoint and sha256 for provenance).

    Raises:
        The errors of `load_openclip_clip` and `load_text_tokenizer` (CardError, MissingResourceError,
        CheckpointError), and ValueError for empty class names or bad templates.
    """
    loaded = load_clip_for_classes(card, weights_dir, allow_download)
    tokenize = load_text_tokenizer(loaded.card)
    model = loaded.model.to(device=device, dtype=dtype)
    weights = class_weights(model, tokenize, class_names, templates)
    classifier = ZeroShotClassifier(model.visual, weights, model.logit_scale, loaded.image_size)
    classifier.prompts = ClassPrompts(model, tokenize, list(class_names), list(templates))
    return classifier, loaded


class ClassPrompts:
    """The text side of a zero-shot classifier, kept for attacks on its class prompts: every template filled
    with a class's name, and the class weight a (perturbed) set of such prompts gives."""

    def __init__(self, model: nn.Module, tokenize: Callable[[list[str]], torch.Tensor], class_names: list[str],
                 templates: list[str]):
        self.model, self.tokenize, self.class_names, self.templates = model, tokenize, class_names, templates

    @property
    def token_embedding(self) -> torch.Tensor:
        return self.model.token_embedding.weight

    def tokens(self, labels: list[int]) -> torch.Tensor:
        """(len(labels) x n_templates, L): each label's class prompts, template after template."""
        return self.tokenize(self.texts(labels)).to(self.token_embedding.device)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Unit text features of prompts given as text."""
        return self.features(self.tokenize(texts).to(self.token_embedding.device))

    def weights(self, tokens: torch.Tensor, embedded: torch.Tensor | None = None) -> torch.Tensor:
        """(n, D) unit class weights of n classes' prompt tokens (n x n_templates rows), as `class_weights`
        builds them; `embedded` replaces the token embeddings (a text attack's gradient flows through it)."""
        return self.class_weights_of(self.features(tokens, embedded))

    def class_weights_of(self, features: torch.Tensor) -> torch.Tensor:
        """(n, D) unit class weights from the unit features of n classes' prompts (n x n_templates rows)."""
        per_class = features.view(-1, len(self.templates), features.shape[-1]).mean(1)
        return F.normalize(per_class, dim=-1)

    def features(self, tokens: torch.Tensor, embedded: torch.Tensor | None = None) -> torch.Tensor:
        """Unit text features of prompt tokens; `embedded` replaces their token embeddings."""
        hook = None
        if embedded is not None:
            hook = self.model.token_embedding.register_forward_hook(lambda m, a, out: embedded.to(out.dtype))
        try:
            return F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        finally:
            if hook is not None:
                hook.remove()

    def texts(self, labels: list[int]) -> list[str]:
        """Each label's class prompts, template after template (what `tokens` tokenizes)."""
        return [t.format(self.class_names[y]) for y in labels for t in self.templates]

    def decode(self, tokens: torch.Tensor) -> list[str]:
        decode = getattr(self.tokenize, "decode", None)
        rows = tokens.tolist()
        return [decode(row) if decode else " ".join(map(str, row)) for row in rows]
