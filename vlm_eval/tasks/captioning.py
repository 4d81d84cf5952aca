"""Image captioning scored with CIDEr (COCO, Flickr30k)."""

from __future__ import annotations

import numpy as np

from vlm_eval.cards import TaskCard
from vlm_eval.contracts import Json
from vlm_eval.data.samples import Sample
from vlm_eval.metrics import CiderSet, require_java
from vlm_eval.metrics.answers import postprocess_caption
from vlm_eval.tasks.generation import GenerationTask


class Captioning(GenerationTask):
    """Captioning task type: one caption per image, CIDEr over the whole evaluated set."""

    metric = "cider"
    _scorer: CiderSet | None = None  # the last reference set's, reused while the references stay the same

    def __init__(self, card: TaskCard, options: dict[str, Json]):
        self.card = card
        self.postprocess_style = options.get("postprocess", "llava")
        postprocess_caption("", self.postprocess_style)  # unknown styles fail here, before any work

    def check_requirements(self) -> None:
        require_java()  # fail before hours of generation, not after

    def prompt_args(self, sample: Sample) -> tuple[str, str | None]:
        return self.card.prompt, None

    def attack_texts(self, sample: Sample) -> list[str]:
        """The texts untargeted attacks push away from, first first: the Karpathy sentences in file order
        (RobustVLM's k-th caption), else the reference captions."""
        return list(sample.attack_texts or sample.references)

    def postprocess(self, text: str) -> str:
        return postprocess_caption(text, self.postprocess_style)

    def score(self, references: dict[str, list[str]], outputs: dict[str, str]) -> tuple[dict[str, float], dict[str, float]]:
        """(the mean CIDEr of `outputs`, per-sample CIDEr), x100; outputs may cover some of the references' ids,
        each scored relative to the whole reference set (its idf), as a score of the whole set would."""
        per_item = self.scorer(references).per_item(outputs)
        return {"cider": sum(per_item.values()) / len(per_item) if per_item else float("nan")}, per_item

    def resampled_scores(self, references: dict[str, list[str]], outputs: dict[str, str], draws: np.ndarray) -> np.ndarray:
        """(r, n): per-sample CIDEr under the idf of each bootstrap resample (`draws`: how often each id of
        `references`, in order, was drawn)."""
        return self.scorer(references).resampled(outputs, draws)

    def scorer(self, references: dict[str, list[str]]) -> CiderSet:
        """CIDEr for this reference set, its references tokenised once (an ensemble scores every batch)."""
        if self._scorer is None or not self._scorer.same_references(references):
            self._scorer = CiderSet(references)
        return self._scorer

    def options(self) -> dict[str, Json]:
        return {"postprocess": self.postprocess_style, "max_new_tokens": self.card.max_new_tokens,
                **self.demonstration_options()}
