"""The seams between the packages, as types: what crosses them and nothing else.

Typing only (Protocols, aliases, a TypedDict) plus `Batch`, the one value every VLM takes. Attacks
see a `LossFn`; run/ sees a `TaskType` and the model it asks for; a task sees a `VLM` or a
`Classifier`. No module here imports another package of the toolkit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, TypedDict

if TYPE_CHECKING:
    import numpy as np
    import torch
    import transformers
    from PIL import Image

    from vlm_eval.attacks.schedule import AttackPlan
    from vlm_eval.cards import EncoderCard, TaskCard, VlmCard
    from vlm_eval.data.samples import Sample
    from vlm_eval.results import SavedAdversarial
    from vlm_eval.semantic import SemanticJudge

# loss_fn(pixels (n, 3, H, W) in [0, 1], rows (n,) of the batch they belong to, or None for all) -> loss (n,)
LossFn = Callable[..., "torch.Tensor"]
# (step, rows, their best iterates so far, the loss there) -> which of them are done and may leave the batch
DoneFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
# a JSON value as it is written to samples.jsonl / summary.json
Json = Any


@dataclass
class Batch:
    """A batch of samples as a VLM sees them."""

    ids: list[str]
    pixels: torch.Tensor  # (B, 3, H, W), float, values in [0, 1], not normalised
    prompts: list[str]  # one formatted prompt per sample, each with exactly one "<image>"
    kind: str = ""  # the prompt kind ("caption", "vqa", ...): some families generate differently per kind
    context: torch.Tensor | None = None  # (B, k, 3, H, W) in [0, 1]: demonstrations' images, before `pixels`; never attacked

    def select(self, rows: list[int], pixels: torch.Tensor) -> Batch:
        """Samples `rows` of this batch, with other images (attacked ones, say)."""
        context = None if self.context is None else self.context[rows]
        return Batch([self.ids[i] for i in rows], pixels, [self.prompts[i] for i in rows], self.kind, context)


@dataclass
class Step:
    """What a task's batch step needs besides the model and the batch."""

    run_dir: Path  # where the step may save adversarial images and attack snapshots
    samples: list[Sample]  # the whole evaluated set (an ensemble scores against all its references)
    attack: AttackPlan | None = None  # None: a clean run, or a replay
    replay: SavedAdversarial | None = None  # --from-adversarial: saved images instead of an attack
    judge: SemanticJudge | None = None  # the semantic checks of attacked samples


class Record(TypedDict, total=False):
    """One line of samples.jsonl. Every task writes `id`, `image` and `score`; the rest is the task's."""

    id: str
    image: str
    score: float
    output: str  # captioning / VQA: the post-processed output, and the VLM's own text
    raw_output: str
    references: list[str]
    question: str
    score_robust: float
    adversarial: dict[str, Json]  # attacked runs: output, target, attack, loss, steps, semantic, ...
    label: str  # zero-shot classification
    prediction: str
    top5: list[str]
    label_index: int
    prediction_index: int


class ImageEncoder(Protocol):
    """A loaded CLIP vision tower (what a VLM family swaps in), with its provenance."""

    visual: torch.nn.Module
    card: EncoderCard
    checkpoint: str | None
    sha256: str | None
    image_size: int

    def hf_vision_model(self) -> transformers.CLIPVisionModel: ...  # the tower in the form HF VLMs take


class EncoderFamily(Protocol):
    """What the toolkit asks of an encoder family (`ENCODER_FAMILIES`): every encoder access goes here."""

    def card_from_spec(self, spec: str, arch: str | None = None) -> EncoderCard | None: ...  # None: its default

    def resolve_checkpoint(self, card: EncoderCard, weights_dir: Path | None, allow_download: bool) -> Path | None: ...

    def weights_status(self, card: EncoderCard, weights_dir: Path | None) -> tuple[bool, str]: ...

    def tokenizer_file(self, card: EncoderCard) -> Path | None: ...

    def load_vision(self, card: EncoderCard, weights_dir: Path | None, allow_download: bool) -> ImageEncoder: ...

    def load_clip(self, card: EncoderCard, weights_dir: Path | None, allow_download: bool
                  ) -> tuple[torch.nn.Module, Callable[[list[str]], torch.Tensor], dict[str, Json]]: ...

    def load_classifier(self, card: EncoderCard, class_names: list[str], templates: list[str],
                        weights_dir: Path | None, allow_download: bool, device: str,
                        dtype: torch.dtype) -> tuple[Classifier, dict[str, Json]]: ...

    def load_reference(self, card: EncoderCard, weights_dir: Path | None, allow_download: bool,
                       device: str) -> tuple[ReferenceEncoder, dict[str, Json]]: ...


class VLM(Protocol):
    """A vision-language model over [0, 1] pixels; it normalises them itself."""

    image_size: int

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def preprocess(self, image: Image.Image) -> torch.Tensor: ...  # (3, S, S) in [0, 1], the family's geometry

    # (question, answer) demonstrations first, text only or each with its image (then in `Batch.context`)
    def prompt(self, kind: str, question: str | None = None, demonstrations: Sequence[tuple[str | None, str]] = (),
               with_images: bool = False) -> str: ...

    def generate(self, batch: Batch, max_new_tokens: int) -> list[str]: ...

    def loss_closure(self, batch: Batch, targets: list[str]) -> LossFn: ...

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor: ...  # (B, D), for the semantic checks

    def embed(self, pixels: torch.Tensor) -> torch.Tensor: ...  # the same, differentiable, on the device (TTC)

    def describe(self) -> dict[str, Json]: ...

    def swap_encoder(self, encoder: ImageEncoder) -> None: ...  # another encoder in place of the swapped-in one


class VlmFamily(Protocol):
    """What the wiring asks of a VLM family (`VLM_FAMILIES`)."""

    prompts: tuple[str, ...]  # the prompt kinds a task card may name
    postprocess: str  # its own evaluation's clean-up of outputs ("llava", "openflamingo"): --postprocess auto

    def demonstrations(self, shots: int) -> tuple[int, bool]: ...  # --shots -> (per prompt, carrying images)

    def encoder_swapped(self, resolution: int, encoder: str) -> bool: ...  # else the VLM's own tower

    def weights_status(self, card: VlmCard) -> tuple[bool, str]: ...

    def load(self, card: VlmCard, encoder: ImageEncoder | None, dtype: torch.dtype, device: str,
             allow_download: bool, device_map: str | None = None) -> VLM: ...  # device_map: split over GPUs


class Classifier(Protocol):
    """Pixels in [0, 1] -> class logits (B, n_classes), differentiable in the pixels."""

    image_size: int

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...  # the weights' (the logits are fp32 whatever the weights are)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def attack_logits(self, pixels: torch.Tensor) -> list[torch.Tensor]: ...  # what attacks see (several: EOT)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor: ...  # (B, D) image embeddings, not normalised

    def preprocess(self, image: Image.Image) -> torch.Tensor: ...


class ReferenceEncoder(Protocol):
    """A fixed CLIP for the semantic checks: unit-norm image and text embeddings."""

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def embed_texts(self, texts: list[str]) -> torch.Tensor: ...


class Defense(Protocol):
    """A test-time defence: [0, 1] pixels -> [0, 1] pixels, where pixels enter the model; `draw` picks
    another draw of its randomness (EOT), each image's seeded by its own pixels."""

    def __call__(self, pixels: torch.Tensor, draw: int = 0) -> torch.Tensor: ...


class TaskType(Protocol):
    """A task type (`TASK_TYPES`): it owns one batch's step and the aggregation of the records."""

    card: TaskCard
    metric: str
    model_kind: str  # "vlm" or "classifier": what run/models.py loads for it

    def check_requirements(self) -> None: ...

    def setup(self, files: dict[str, Path]) -> None: ...  # read what the task needs besides its samples

    def evaluate_batch(self, model: VLM | Classifier, samples: list[Sample], pixels: torch.Tensor,
                       step: Step) -> list[Record]: ...

    def aggregate(self, records: list[Record], step: Step) -> dict[str, float]: ...

    # draws (r, n): how often each of `records` is drawn in r bootstrap resamples -> per metric, its r values
    def resampled(self, records: list[Record], draws: np.ndarray) -> dict[str, np.ndarray]: ...

    def options(self) -> dict[str, Json]: ...


class VlmTask(TaskType, Protocol):
    """A task whose model is a VLM: it draws in-context demonstrations for families that take them."""

    def want_demonstrations(self, per_sample: int, with_images: bool, seed: int, data_root: Path | None) -> None: ...


class ClassifierTask(TaskType, Protocol):
    """A task whose model is the encoder's zero-shot classifier over its classes (read by `setup`)."""

    class_names: list[str]
    templates: tuple[str, ...]
