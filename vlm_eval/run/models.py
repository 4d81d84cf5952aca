"""From a plan to the loaded model (a VLM with its encoder inside, or an encoder's classifier), the
semantic checks' models, and the provenance that goes into summary.json. No files are written.

What a task needs is its `model_kind`; the families named by the cards load it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from vlm_eval import cards, results
from vlm_eval.cards import EncoderCard, TaskCard, VlmCard
from vlm_eval.contracts import VLM, Classifier, ClassifierTask, Json
from vlm_eval.run.plan import Plan, encoder_family, optional_path, vlm_family

if TYPE_CHECKING:
    import torch

    from vlm_eval.semantic import SemanticJudge


@dataclass
class Loaded:
    model: VLM | Classifier
    provenance: dict[str, Json]
    judge: SemanticJudge | None = None  # attacked runs: the semantic checks' models


def load(plan: Plan) -> Loaded:
    """The task's model, and, in an attacked run of a VLM, the semantic checks' models; torch's CPU threads set
    first (`--threads`)."""
    threads = use_threads(plan.config.threads)
    loaded = LOADERS[plan.task.model_kind](plan)
    if plan.semantic_checked:
        loaded.judge, loaded.provenance["semantic"] = load_judge(plan, loaded.model)
    loaded.provenance["threads"] = threads
    if plan.attack is not None:
        loaded.provenance["attack_precision"] = attack_precisions(plan)
    return loaded


def attack_precisions(plan: Plan) -> dict[str, str]:
    """Each precision the attack's schedule names, as it runs on this device ({"fp16": "bf16"} on a CPU with bf16
    hardware): what a CPU run of the protocol actually computed in."""
    from vlm_eval.attacks.executor import as_run

    named = ({run.precision for run in plan.attack.schedule.runs} | {plan.attack.clean_precision}) - {"model"}
    return {name: as_run(plan.placed_device, name) for name in sorted(named)}


def use_threads(threads: int | None) -> int:
    """Set torch's CPU threads: `threads`, else the cores this process may run on (which a scheduler or
    `taskset` may limit below the machine's)."""
    import os

    import torch

    chosen = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    torch.set_num_threads(chosen)
    return chosen


_kept: dict[tuple, VLM] | None = None  # inside `keeping_vlm_loaded`: the VLM last loaded, by what loaded it


@contextmanager
def keeping_vlm_loaded() -> Iterator[None]:
    """Runs in this block that load the VLM of the one before (card, precision, device, tower swapped or not)
    reuse it with their own encoder swapped in: a sweep loads each language model once."""
    global _kept
    _kept = {}
    try:
        yield
    finally:
        _kept = None


def load_vlm(plan: Plan) -> Loaded:
    """The VLM with the encoder swapped in (or its own tower)."""
    config, card = plan.config, plan.encoder_card
    encoder = None
    if card is not None:
        encoder = encoder_family(card).load_vision(card, optional_path(config.weights_dir), config.allow_download)
    key = (plan.vlm_card.name, plan.precision, plan.placed_device, config.device_map, encoder is None)
    vlm = _kept.get(key) if _kept is not None else None
    if vlm is None:
        vlm = vlm_family(plan.vlm_card).load(plan.vlm_card, encoder, torch_dtype(plan.precision), plan.placed_device,
                                             config.allow_download, config.device_map)
        if _kept is not None:
            _kept.clear()  # one VLM in memory at a time
            _kept[key] = vlm
    elif encoder is not None:
        vlm.swap_encoder(encoder)
    defense = None
    if plan.defense is not None:
        vlm, defense = defended(plan, vlm)
    return Loaded(vlm, {
        **shared_provenance(plan.vlm_card, card, plan.task_card),
        "encoder": None if encoder is None else {"name": card.name, "checkpoint": encoder.checkpoint,
                                                 "sha256": encoder.sha256},
        "vlm": {"name": plan.vlm_card.name, "hf_id": plan.vlm_card.hf_id, **vlm.describe()},
        "random_weights": plan.vlm_card.build is not None or (card is not None and "random" in card.source),
        "resolution": vlm.image_size,
        "precision": plan.precision,
        "device": plan.placed_device,
        "defense": defense,
    })


def load_classifier(plan: Plan) -> Loaded:
    """The encoder's zero-shot classifier over the task's classes (read by `task.setup`)."""
    config, card = plan.config, plan.encoder_card
    task: ClassifierTask = plan.task  # model_kind "classifier" promises class_names and templates
    classifier, encoder = encoder_family(card).load_classifier(
        card, task.class_names, list(task.templates), optional_path(config.weights_dir),
        config.allow_download, plan.placed_device, torch_dtype(plan.precision))
    defense = None
    if plan.defense is not None:
        classifier, defense = defended(plan, classifier)
    return Loaded(classifier, {
        **shared_provenance(card, plan.task_card),
        "encoder": encoder,
        "vlm": None,
        "random_weights": "random" in card.source,
        "resolution": classifier.image_size,
        "precision": plan.precision,
        "device": plan.placed_device,
        "n_classes": len(task.class_names),
        "defense": defense,
    })


def defended(plan: Plan, model: VLM | Classifier) -> tuple[VLM | Classifier, dict[str, Json]]:
    """The model behind the plan's defence (TTC's tau measured by the original encoder if the plan
    names one), and the defence's provenance."""
    from vlm_eval.data.images import clip_normalize
    from vlm_eval.defenses import DefendedClassifier, DefendedVLM
    from vlm_eval.defenses.ttc import TestTimeCounterattack

    tau_embed, tau_from = None, plan.encoder_card.name if plan.encoder_card else "the VLM's own tower"
    if plan.tau_card is not None:
        tower = encoder_family(plan.tau_card).load_vision(plan.tau_card, optional_path(plan.config.weights_dir),
                                                          plan.config.allow_download)
        visual = tower.visual.to(plan.placed_device).eval().requires_grad_(False)
        tau_embed, tau_from = (lambda pixels: visual(clip_normalize(pixels.float()))), plan.tau_card.name
    defense = TestTimeCounterattack(model.embed, plan.defense.settings, tau_embed)
    wrapper = DefendedClassifier if plan.classifier else DefendedVLM
    return wrapper(model, defense, plan.defense), {**plan.defense.describe(), "tau_encoder": tau_from}


LOADERS: dict[str, Callable[[Plan], Loaded]] = {"vlm": load_vlm, "classifier": load_classifier}


def load_judge(plan: Plan, model: VLM) -> tuple[SemanticJudge, dict[str, Json]]:
    """The models of the semantic checks: the VLM's own tower, the reference CLIP, the sentence model."""
    from vlm_eval.encoders.sentence import load_sentence_model
    from vlm_eval.semantic import KEEP_CLIP_SCORE, THRESHOLDS, SemanticJudge

    config, card = plan.config, plan.reference_card
    reference, described = None, None
    if card is not None:
        reference, described = encoder_family(card).load_reference(card, optional_path(config.weights_dir),
                                                                   config.allow_download, plan.placed_device)
    embed_texts = None
    if plan.sentence_model == "reference":
        embed_texts = reference.embed_texts
    elif plan.sentence_model is not None:
        embed_texts = load_sentence_model(plan.sentence_model, plan.placed_device, config.allow_download)
    provenance = {"reference_encoder": described, "sentence_model": plan.sentence_model, "thresholds": THRESHOLDS,
                  "keep_clip_score": KEEP_CLIP_SCORE}
    return SemanticJudge(model.image_embeddings, reference, embed_texts), provenance


def shared_provenance(*cards_used: VlmCard | EncoderCard | TaskCard | None) -> dict[str, Json]:
    """Package versions, the toolkit's git revision and the sha256 of each card used (None: not used)."""
    return {
        "packages": results.package_versions(),
        "git_revision": results.git_revision(cards.CARD_ROOT),
        "cards": {c.name: results.file_sha256(c.card_path) for c in cards_used if c is not None and c.card_path},
    }


def torch_dtype(precision: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
