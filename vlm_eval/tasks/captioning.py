"""Image captioning scored with CIDEr (COCO, Flickr30k)."""

from __future__ import annotations

from vlm_eval.cards import TaskCard
from vlm_eval.contracts import Json
from vlm_eval.data.samples import Sample
from vlm_eval.metrics import cider, require_java
from vlm_eval.metrics.answers import postprocess_caption
from vlm_eval.tasks.generation import GenerationTask


class Captioning(GenerationTask):
    """Captioning task type: one caption per image, CIDEr over the whole evaluated set."""

    metric = "cider"

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
        """(corpus metrics on the x100 scale, per-sample CIDEr relative to this set)."""
        corpus, per_item = cider(references, outputs)
        return {"cider": corpus}, per_item

    def options(self) -> dict[str, Json]:
        return {"postprocess": self.postprocess_style, "max_new_tokens": self.card.max_new_tokens,
                **self.demonstration_options()}
