"""In-context demonstrations for VLMs that take them (OpenFlamingo): drawn from the task's training split.

As OpenFlamingo's evaluation: a query set of 2,048 training samples is drawn once (seeded), and each
evaluated sample gets its demonstrations from it. The draw is seeded by the run's seed and the
sample's id, so a sample's prompt is the same in every batch, shard and resumed run (upstream draws
from one random stream in batch order, which RobustVLM leaves unseeded).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from vlm_eval.cards import TaskCard
from vlm_eval.data.samples import Sample
from vlm_eval.errors import DataError, VlmEvalError

if TYPE_CHECKING:
    import torch
    from PIL import Image

QUERY_SET_SIZE = 2048


class Demonstrations:
    """Each sample's demonstrations: `per_sample` training samples, text only or with their images."""

    def __init__(self, pool: list[Sample], per_sample: int, with_images: bool, seed: int):
        if len(pool) < per_sample:
            raise VlmEvalError(f"{per_sample} demonstrations per sample, but the training split has {len(pool)} samples")
        self.query_set = random.Random(seed).sample(pool, min(QUERY_SET_SIZE, len(pool)))
        self.per_sample, self.with_images, self.seed = per_sample, with_images, seed

    def draw(self, sample: Sample) -> list[Sample]:
        """The sample's demonstrations: the same in every batch, shard and resumed run."""
        return random.Random(f"{self.seed}/{sample.id}").sample(self.query_set, self.per_sample)

    def of(self, sample: Sample) -> list[tuple[str | None, str]]:
        """(question, answer) of each of the sample's demonstrations."""
        return texts(self.draw(sample))

    def images(self, preprocess: Callable[[Image.Image], torch.Tensor],
               drawn: list[list[Sample]]) -> torch.Tensor | None:
        """(B, k, 3, H, W) in [0, 1]: the images of each sample's drawn demonstrations, in the VLM's
        geometry; None: text only."""
        if not self.with_images:
            return None
        import torch

        return torch.stack([torch.stack([preprocess(demonstration_image(d)) for d in demos]) for demos in drawn])


def texts(demonstrations: list[Sample]) -> list[tuple[str | None, str]]:
    return [(d.question, demonstration_answer(d)) for d in demonstrations]


def demonstration_image(sample: Sample) -> Image.Image:
    """A demonstration's image; a missing or broken one stops the run (it is a setup error, not a bad sample)."""
    from vlm_eval.data.images import load_image
    from vlm_eval.errors import BadSampleError

    try:
        return load_image(sample.image_path, sample.id)
    except BadSampleError as exc:
        raise DataError(f"demonstration image: {exc}; the task card's `demonstrations` files say where the "
                        "training images are") from exc


def demonstration_answer(sample: Sample) -> str:
    """A caption's first Karpathy sentence, stripped; a question's first human answer (OpenFlamingo's choice)."""
    if sample.question is None:
        return (sample.attack_texts or sample.references)[0].strip()
    return sample.references[0]


def demonstration_card(card: TaskCard) -> TaskCard:
    """The task card of the split demonstrations come from (its `demonstrations`: a split, the files
    that differ from the evaluated split's, a file mapped to null dropped, and an `image_file` template)."""
    if not card.demonstrations:
        raise VlmEvalError(f"task {card.name!r} names no training split for in-context demonstrations: add "
                           "`demonstrations: {split: train}` (and its files, where they differ) to "
                           f"{card.card_path}")
    files = {**card.files, **card.demonstrations.get("files", {})}
    return dataclasses.replace(card, split=card.demonstrations.get("split", "train"),
                               files={k: v for k, v in files.items() if v is not None},
                               image_file=card.demonstrations.get("image_file", card.image_file))


def read_demonstrations(card: TaskCard, data_root: Path | None, per_sample: int, with_images: bool,
                        seed: int) -> Demonstrations:
    from vlm_eval.tasks.data import check_task_data, read_task_samples

    pool_card = demonstration_card(card)
    pool = read_task_samples(pool_card, check_task_data(pool_card, data_root))
    return Demonstrations(pool, per_sample, with_images, seed)
