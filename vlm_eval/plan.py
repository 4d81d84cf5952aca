"""From a config to a checked plan: cards, task, attack, subset, device and every resource, checked
before any model is loaded, so a failed start costs seconds and leaves nothing behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm_eval import cards
from vlm_eval.config import EvalConfig
from vlm_eval.errors import MissingResourceError, VlmEvalError

ZEROSHOT = "zeroshot"  # the task type evaluated without a VLM


@dataclass
class Resolved:
    """The cards, task and runtime choices that a config names, checked before loading anything."""

    vlm_card: Any | None  # None for zero-shot tasks
    encoder_card: Any | None  # None in native mode
    task_card: Any
    task: Any
    device: str
    precision: str
    run_dir: Path
    n_samples: int | None  # the subset's size (None: the whole split) and seed, as chosen by `subset_choice`
    seed: int
    attack: Any | None = None  # AttackSpec, EnsembleSpec or SavedAdversarial; None for a clean run
    reference_card: Any | None = None  # the semantic checks' reference CLIP; None: those checks are skipped
    sentence_model: str | None = None  # hub id, folder or "reference" (its text tower); None: skipped
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def zeroshot(self) -> bool:
        return self.task_card.type == ZEROSHOT


def resolve(config: EvalConfig) -> Resolved:
    """Cards, device, precision and task type; raises a `VlmEvalError` for anything unknown."""
    from vlm_eval.tasks import TASK_TYPES
    from vlm_eval.vlms.prompts import INSTRUCTIONS

    task_card = cards.load_card("tasks", config.task)
    zeroshot = task_card.type == ZEROSHOT
    vlm_card = None if zeroshot else cards.load_card("vlms", config.vlm)
    encoder_card = load_encoder_card(config) if zeroshot else resolve_encoder_card(config)
    if not zeroshot and task_card.prompt not in INSTRUCTIONS:
        raise VlmEvalError(f"task card {task_card.card_path}: unknown prompt {task_card.prompt!r}; known: {', '.join(INSTRUCTIONS)}")
    device = resolve_device(config.device)
    precision = config.precision if config.precision != "auto" else ("fp16" if device.startswith("cuda") else "fp32")
    options = {"vqa_normalize": config.vqa_normalize, "postprocess": config.postprocess}
    try:
        task = TASK_TYPES.get(task_card.type)(task_card, options)
    except ValueError as exc:
        raise VlmEvalError(f"task {task_card.name!r}: {exc}") from exc
    attack = resolve_attack(config, task_card)
    if attack is not None and attack.name == "ensemble":
        if config.precision not in ("auto", "fp32"):
            raise VlmEvalError("--attack ensemble keeps fp32 weights and runs its half-precision attacks under "
                               "autocast: drop --precision or use fp32")
        precision = "fp32"
    reference_card, sentence_model = resolve_semantic(config, vlm_card) if attack is not None else (None, None)
    return Resolved(vlm_card, encoder_card, task_card, task, device, precision, run_dir_for(config, zeroshot),
                    *subset_choice(config, attack), attack, reference_card, sentence_model)


def subset_choice(config: EvalConfig, attack: Any | None) -> tuple[int | None, int]:
    """(subset size, seed) as given, else the protocol's: 500 samples with seed 42, or, for a targeted
    preset, RobustVLM's 25 images with the preset's own seed."""
    from vlm_eval.attacks.vlm import TARGET_SEEDS, TARGETED_SAMPLES
    from vlm_eval.config import PROTOCOL_SAMPLES, PROTOCOL_SEED

    preset_seed = TARGET_SEEDS.get(getattr(attack, "target", None))
    n_samples = config.n_samples
    if n_samples == "auto":
        n_samples = TARGETED_SAMPLES if preset_seed is not None else PROTOCOL_SAMPLES
    if config.seed is not None:
        return n_samples, config.seed
    return n_samples, preset_seed if preset_seed is not None else PROTOCOL_SEED


def resolve_semantic(config: EvalConfig, vlm_card: Any) -> tuple[Any | None, str | None]:
    """The reference encoder's card and the sentence model of the semantic checks, by default the VLM
    card's; "none" skips the checks that need them."""
    from vlm_eval.encoders.openclip_family import encoder_card_from_spec

    reference, sentences = semantic_models(config, vlm_card)
    card = None
    if reference != "none":  # a checkpoint path is a ViT-L/14 (--encoder-arch is the evaluated encoder's)
        card = encoder_card_from_spec(reference) or cards.load_card("encoders", reference)
    if sentences == "reference" and card is None:
        raise VlmEvalError("--sentence-model reference embeds outputs with the reference encoder's text tower, "
                           "but --reference-encoder is none: name a reference encoder or a sentence model")
    return card, None if sentences == "none" else sentences


def semantic_models(config: EvalConfig, vlm_card: Any) -> tuple[str, str]:
    """(reference encoder, sentence model) as given, else the VLM card's."""
    return config.reference_encoder or vlm_card.reference_encoder, config.sentence_model or vlm_card.sentence_model


def resolve_attack(config: EvalConfig, task_card: Any) -> Any | None:
    """The attack the config asks for (None for a clean run); bad names and radii fail here."""
    if task_card.type == ZEROSHOT and (config.attack != "none" or config.from_adversarial):
        raise VlmEvalError("attacks are not available for zero-shot classification tasks yet")
    if config.from_adversarial:
        if config.attack != "none":
            raise VlmEvalError("--from-adversarial evaluates saved images instead of attacking: drop --attack")
        from vlm_eval.attacks.saved import SavedAdversarial

        return SavedAdversarial(Path(config.from_adversarial), config.quantize_8bit)
    if config.quantize_8bit:
        raise VlmEvalError("--quantize-8bit applies to the images of --from-adversarial RUN_DIR")
    if config.attack == "none":
        if config.schedule:
            raise VlmEvalError("--schedule is for --attack ensemble")
        return None
    if config.attack == "ensemble":
        return ensemble_spec(config, task_card)
    from vlm_eval.attacks.vlm import AttackSpec

    try:
        return AttackSpec.parse(config.attack, config.eps, config.norm, config.steps, config.target, config.check_every)
    except ValueError as exc:
        raise VlmEvalError(str(exc)) from exc


def ensemble_spec(config: EvalConfig, task_card: Any) -> Any:
    """The schedule of --schedule, or the task type's default in schedules/, with the attack budget and the
    threshold under which samples leave (the schedule's, else the task card's)."""
    from vlm_eval.attacks.ensemble import EnsembleSpec, Schedule
    from vlm_eval.attacks.threat import ThreatModel
    from vlm_eval.attacks.vlm import PROTOCOL_OPTIONS

    path = Path(config.schedule) if config.schedule else cards.card_dir("schedules") / f"{task_card.type}.yaml"
    try:
        threat = ThreatModel.parse(config.eps, config.norm)
    except ValueError as exc:
        raise VlmEvalError(str(exc)) from exc
    schedule = Schedule.load(path)
    stop_below = schedule.stop_below if schedule.stop_below is not None else task_card.stop_below
    if stop_below is None:
        raise VlmEvalError(f"--attack ensemble needs the score under which a sample leaves the schedule: set "
                           f"`stop_below` in the task card {task_card.card_path} or in the schedule {path}")
    return EnsembleSpec(schedule, threat, config.steps, PROTOCOL_OPTIONS, stop_below)


def resolve_encoder_card(config: EvalConfig) -> Any | None:
    """The encoder card to swap in at 224 px, or None for LLaVA's own tower at 336 px."""
    if config.resolution != 224:
        if config.encoder not in ("openai", "clip", "native"):
            raise VlmEvalError(
                f"--resolution {config.resolution} runs LLaVA's own tower, so --encoder {config.encoder!r} would be "
                "ignored; robust encoders are 224-px models: use --resolution 224"
            )
        return None
    return load_encoder_card(config)


def load_encoder_card(config: EvalConfig) -> Any:
    """The card of `--encoder` (a card name, a checkpoint path or hf-hub:), checked against --resolution."""
    from vlm_eval.encoders.openclip_family import encoder_card_from_spec

    card = encoder_card_from_spec(config.encoder, arch=config.encoder_arch) or cards.load_card("encoders", config.encoder)
    if card.image_size != config.resolution:
        raise VlmEvalError(f"encoder {card.name!r} takes {card.image_size}-px images, not {config.resolution}")
    return card


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise VlmEvalError(f"unknown --device {name!r}: use cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VlmEvalError(f"--device {name}: no CUDA GPU is visible to torch; use --device cpu")
    return name


def preflight(config: EvalConfig, resolved: Resolved, resume: bool = False) -> dict[str, Path]:
    """The task's data files; raises one error listing every missing resource (data, Java, weights)."""
    from vlm_eval.encoders.openclip_family import resolve_checkpoint
    from vlm_eval.encoders.sentence import sentence_model_status
    from vlm_eval.encoders.text import tokenizer_file
    from vlm_eval.listing import vlm_status
    from vlm_eval.tasks.data import check_task_data, prepare_generated_data

    check_run_dir_is_resumable(resolved.run_dir) if resume else check_run_dir_is_free(resolved.run_dir)
    problems: list[str] = []

    def attempt(check: Any) -> Any:
        try:
            return check()
        except MissingResourceError as exc:
            problems.append(str(exc))

    card, data_root = resolved.task_card, optional_path(config.data_root)
    generated = card.generator is not None  # written below, once every other check has passed
    files = None if generated else attempt(lambda: check_task_data(card, data_root, config.data))
    attempt(resolved.task.check_requirements)
    if resolved.encoder_card is not None:
        attempt(lambda: resolve_checkpoint(resolved.encoder_card, optional_path(config.weights_dir), config.allow_download))
    if resolved.zeroshot:
        attempt(lambda: tokenizer_file(resolved.encoder_card))
    else:
        present, where = vlm_status(resolved.vlm_card)
        if not present and not config.allow_download:
            problems.append(f"weights of VLM {resolved.vlm_card.name!r} not found: {where} (or rerun with --allow-download)")
    if resolved.reference_card is not None:
        attempt(lambda: resolve_checkpoint(resolved.reference_card, optional_path(config.weights_dir), config.allow_download))
        attempt(lambda: tokenizer_file(resolved.reference_card))
    if resolved.sentence_model not in (None, "reference") and not config.allow_download:
        present, where = sentence_model_status(resolved.sentence_model)
        if not present:
            problems.append(f"sentence model {resolved.sentence_model!r} of the semantic checks: {where} "
                            "(or rerun with --allow-download, or skip it with --sentence-model none)")
    if problems:
        raise MissingResourceError("\n\n".join(problems))
    if generated:
        prepare_generated_data(card, data_root, config.data)
        files = check_task_data(card, data_root, config.data)
    return files


def check_run_dir_is_free(run_dir: Path) -> None:
    """Never overwrite outputs: neither a finished run nor the samples (or the attack) of an interrupted one."""
    for name, state in (("summary.json", "a finished run"), ("samples.jsonl", "the outputs of an interrupted run"),
                        ("subset_ids.txt", "an interrupted run")):
        if (run_dir / name).exists():
            hint = "" if name == "summary.json" else f" (to finish it: python -m vlm_eval resume {run_dir})"
            raise VlmEvalError(f"{run_dir} already holds {state} ({name}); choose another --output-dir{hint}")


def check_run_dir_is_resumable(run_dir: Path) -> None:
    if (run_dir / "summary.json").exists():
        raise VlmEvalError(f"{run_dir} holds a finished run (summary.json): nothing to resume")
    if not (run_dir / "subset_ids.txt").is_file():
        raise VlmEvalError(f"{run_dir} has no subset_ids.txt: the run stopped before it started; start it again")


def run_dir_for(config: EvalConfig, zeroshot: bool = False) -> Path:
    """--output-dir, else results/<task>-<vlm>-<encoder>-<time> (zero-shot: results/<task>-<encoder>-<time>)."""
    if config.output_dir:
        return Path(config.output_dir)
    encoder = Path(config.encoder).stem if config.resolution == 224 or zeroshot else "native"
    models = encoder if zeroshot else f"{config.vlm}-{encoder}"
    return Path("results") / f"{config.task}-{models}-{time.strftime('%Y%m%d-%H%M%S')}"


def optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None
