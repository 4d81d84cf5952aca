"""Visual question answering scored with the official VQA accuracy (VQAv2, OK-VQA, TextVQA, VizWiz)."""

from __future__ import annotations

from vlm_eval.cards import TaskCard
from vlm_eval.contracts import Json
from vlm_eval.data.samples import Sample
from vlm_eval.metrics import VQA_NORMALIZE_MODES, vqa_accuracy
from vlm_eval.metrics.answers import postprocess_vqa_answer
from vlm_eval.tasks.generation import GenerationTask


class VQA(GenerationTask):
    """VQA task type: short answers scored against the human answers of each question."""

    metric = "vqa_accuracy"

    def __init__(self, card: TaskCard, options: dict[str, Json]):
        self.card = card
        self.normalize = options.get("vqa_normalize", "official")
        if self.normalize not in VQA_NORMALIZE_MODES:
            raise ValueError(f"unknown VQA normalisation {self.normalize!r}; known: {', '.join(VQA_NORMALIZE_MODES)}")
        self.postprocess_style = options.get("postprocess", "llava")
        postprocess_vqa_answer("", self.postprocess_style)  # unknown styles fail here, before any work

    def prompt_args(self, sample: Sample) -> tuple[str, str | None]:
        return self.card.prompt, sample.question

    def attack_texts(self, sample: Sample) -> list[str]:
        """The texts untargeted attacks push away from, first first: the distinct human answers, most frequent
        first (ties in file order)."""
        answers = list(sample.references)
        return sorted(dict.fromkeys(answers), key=lambda a: (-answers.count(a), answers.index(a)))

    def postprocess(self, text: str) -> str:
        return postprocess_vqa_answer(text, self.postprocess_style, self.card.answer_comma_cut)

    def score(self, references: dict[str, list[str]], outputs: dict[str, str]) -> tuple[dict[str, float], dict[str, float]]:
        """(mean accuracy, per-question accuracy), both on the x100 scale."""
        per_item = {i: 100.0 * vqa_accuracy(outputs[i], references[i], normalize=self.normalize) for i in outputs}
        mean = sum(per_item.values()) / len(per_item) if per_item else float("nan")
        return {"vqa_accuracy": mean}, per_item

    def options(self) -> dict[str, Json]:
        return {"vqa_normalize": self.normalize, "postprocess": self.postprocess_style,
                "max_new_tokens": self.card.max_new_tokens, **self.demonstration_options()}
