"""From a config to a checked plan: cards, task, attack, subset, device and every resource, checked
before any model is loaded, so a failed start costs seconds and leaves nothing behind.

Families are asked, never named: the VLM family says which prompts it knows and whether the encoder
replaces its tower at the asked resolution; the encoder family finds weights and tokenizers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from vlm_eval import cards
from vlm_eval.cards import EncoderCard, TaskCard, VlmCard
from vlm_eval.config import PROTOCOL_SEED, EvalConfig, resolve_precision
from vlm_eval.errors import MissingResourceError, VlmEvalError
from vlm_eval.run.folder import check_run_dir
from vlm_eval.run.shard import Shard

if TYPE_CHECKING:
    from vlm_eval.attacks.schedule import AttackPlan
    from vlm_eval.contracts import EncoderFamily, TaskType, VlmFamily
    from vlm_eval.defenses import DefenseChoice
    from vlm_eval.results import SavedAdversarial

T = TypeVar("T")


@dataclass
class Plan:
    """The cards, task and runtime choices that a config names, checked before loading anything."""

    config: EvalConfig
    vlm_card: VlmCard | None  # None for tasks whose model is a classifier (zero-shot)
    encoder_card: EncoderCard | None  # None: the VLM's own tower
    task_card: TaskCard
    task: TaskType
    device: str
    precision: str
    run_dir: Path
    n_samples: int | None  # the subset's size (None: the whole split) and seed, as chosen by `subset_choice`
    seed: int
    attack: AttackPlan | None = None  # None for a clean run
    replay: SavedAdversarial | None = None  # --from-adversarial: saved images evaluated instead of attacking
    reference_card: EncoderCard | None = None  # the semantic checks' reference CLIP; None: those checks are skipped
    sentence_model: str | None = None  # hub id, folder or "reference" (its text tower); None: skipped
    defense: DefenseChoice | None = None  # a test-time defence where pixels enter the model
    tau_card: EncoderCard | None = None  # TTC's tau encoder when it is not the evaluated one
    shard: Shard = Shard()  # which part of the run this process evaluates (run.shard)

    @property
    def placed_device(self) -> str:
        """Where this process's models go: `device`, on a launcher's own GPU for each of its processes."""
        return self.shard.device(self.device)

    @property
    def classifier(self) -> bool:
        """The task's model is the encoder's classifier (no VLM)."""
        return self.task.model_kind == "classifier"

    @property
    def attacked(self) -> bool:
        return self.attack is not None or self.replay is not None

    @property
    def semantic_checked(self) -> bool:
        """The semantic checks compare a VLM's clean and attacked outputs: attacked VLM runs only."""
        return self.attacked and not self.classifier


def resolve(config: EvalConfig, shard: Shard = Shard()) -> Plan:
    """Cards, device, precision, task and attack; raises a `VlmEvalError` for anything unknown."""
    from vlm_eval.tasks import TASK_TYPES

    task_card = cards.load_card("tasks", config.task)
    classifier = TASK_TYPES.get(task_card.type).model_kind == "classifier"
    vlm_card = None if classifier else cards.load_card("vlms", config.vlm)
    task = make_task(config, task_card, None if classifier else vlm_family(vlm_card))
    swapped = classifier or vlm_family(vlm_card).encoder_swapped(config.resolution, config.encoder)
    encoder_card = load_encoder_card(config) if swapped else None
    if not classifier and task_card.prompt not in vlm_family(vlm_card).prompts:
        raise VlmEvalError(f"task card {task_card.card_path}: unknown prompt {task_card.prompt!r}; "
                           f"known: {', '.join(vlm_family(vlm_card).prompts)}")
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    attack, replay = resolve_attack(config, task_card, classifier)
    if attack is not None and attack.ensemble:
        if config.precision not in ("auto", "fp32"):
            raise VlmEvalError("--attack ensemble keeps fp32 weights and runs its half-precision attacks under "
                               "autocast: drop --precision or use fp32")
        precision = "fp32"
    checked = (attack is not None or replay is not None) and not classifier  # semantic checks: of VLM outputs
    reference_card, sentence_model = resolve_semantic(config, vlm_card) if checked else (None, None)
    defense, tau_card = resolve_defense(config, encoder_card)
    return Plan(config, vlm_card, encoder_card, task_card, task, device, precision,
                run_dir_for(config, swapped, classifier), *subset_choice(config, attack), attack, replay,
                reference_card, sentence_model, defense, tau_card, shard)


def resolve_defense(config: EvalConfig,
                    encoder_card: EncoderCard | None) -> tuple[DefenseChoice | None, EncoderCard | None]:
    """(the defence asked for, the card of the encoder measuring TTC's tau if not the evaluated one)."""
    from vlm_eval.defenses import choose_defense

    defense = choose_defense(config.defense, config.defense_args, config.adaptive, config.eot_samples)
    if defense is None:
        return None, None
    tau_name = defense.tau_encoder or (encoder_card.original if encoder_card else None)
    if tau_name is None or (encoder_card is not None and tau_name == encoder_card.name):
        return defense, None
    return defense, encoder_card(tau_name, config.encoder_arch)


def make_task(config: EvalConfig, card: TaskCard, family: VlmFamily | None) -> TaskType:
    """The task of the card; a VLM's family supplies the default clean-up and the demonstrations per prompt."""
    from vlm_eval.tasks import TASK_TYPES

    postprocess = config.postprocess if config.postprocess != "auto" or family is None else family.postprocess
    options = {"vqa_normalize": config.vqa_normalize, "postprocess": postprocess, "masked_lm": config.masked_lm}
    try:
        task = TASK_TYPES.get(card.type)(card, options)
    except ValueError as exc:
        raise VlmEvalError(f"task {card.name!r}: {exc}") from exc
    if family is not None:  # a VlmTask
        seed = config.seed if config.seed is not None else PROTOCOL_SEED
        task.want_demonstrations(*family.demonstrations(config.shots), seed, optional_path(config.data_root))
    return task


def vlm_family(card: VlmCard) -> VlmFamily:
    from vlm_eval.vlms import VLM_FAMILIES

    return VLM_FAMILIES.get(card.family)


def encoder_family(card: EncoderCard) -> EncoderFamily:
    from vlm_eval.encoders import ENCODER_FAMILIES

    return ENCODER_FAMILIES.get(card.family)


def subset_choice(config: EvalConfig, attack: AttackPlan | None) -> tuple[int | None, int]:
    """(subset size, seed) as given, else the protocol's: 500 samples with seed 42, or, for a targeted
    preset, RobustVLM's 25 images with the preset's own seed."""
    from vlm_eval.attacks.targets import TARGET_SEEDS, TARGETED_SAMPLES
    from vlm_eval.config import PROTOCOL_SAMPLES, PROTOCOL_SEED

    preset_seed = TARGET_SEEDS.get(attack.target) if attack is not None else None
    n_samples = config.n_samples
    if n_samples == "auto":
        n_samples = TARGETED_SAMPLES if preset_seed is not None else PROTOCOL_SAMPLES
    if config.seed is not None:
        return n_samples, config.seed
    return n_samples, preset_seed if preset_seed is not None else PROTOCOL_SEED


def resolve_semantic(config: EvalConfig, vlm_card: VlmCard) -> tuple[EncoderCard | None, str | None]:
    """The reference encoder's card and the sentence model of the semantic checks, by default the VLM
    card's; "none" skips the checks that need them."""
    reference, sentences = semantic_models(config, vlm_card)
    card = None
    if reference != "none":  # a checkpoint path is a ViT-L/14 (--encoder-arch is the evaluated encoder's)
        card = encoder_card(reference)
    if sentences == "reference" and card is None:
        raise VlmEvalError("--sentence-model reference embeds outputs with the reference encoder's text tower, "
                           "but --reference-encoder is none: name a reference encoder or a sentence model")
    return card, None if sentences == "none" else sentences


def semantic_models(config: EvalConfig, vlm_card: VlmCard) -> tuple[str, str]:
    """(reference encoder, sentence model) as given, else the VLM card's."""
    return config.reference_encoder or vlm_card.reference_encoder, config.sentence_model or vlm_card.sentence_model


def resolve_attack(config: EvalConfig, task_card: TaskCard,
                   classifier: bool) -> tuple[AttackPlan | None, SavedAdversarial | None]:
    """(the attack the config asks for, or the saved images to replay); bad names and radii fail here."""
    if classifier:
        return classifier_attack(config), None
    if config.from_adversarial:
        if config.attack != "none":
            raise VlmEvalError("--from-adversarial evaluates saved images instead of attacking: drop --attack")
        from vlm_eval.results import SavedAdversarial

        return None, SavedAdversarial(Path(config.from_adversarial), config.quantize_8bit)
    if config.quantize_8bit:
        raise VlmEvalError("--quantize-8bit applies to the images of --from-adversarial RUN_DIR")
    if config.attack == "none":
        if config.schedule:
            raise VlmEvalError("--schedule is for --attack ensemble")
        return None, None
    from vlm_eval.attacks.schedule import ENSEMBLE, AttackPlan

    try:
        if config.attack == ENSEMBLE:
            return ensemble_plan(config, task_card), None
        return AttackPlan.single(config.attack, config.eps, config.norm, config.steps, config.target,
                                 config.check_every), None
    except ValueError as exc:
        raise VlmEvalError(str(exc)) from exc


def classifier_attack(config: EvalConfig) -> AttackPlan | None:
    """A zero-shot task's attack (--attack apgd-ce, apgd-t, pgd, cw, autoattack), or None."""
    from vlm_eval.attacks.schedule import PROMPT_ATTACKS, AttackPlan

    for given, option in ((config.from_adversarial, "--from-adversarial"), (config.schedule, "--schedule"),
                          (config.target, "--target")):
        if given:
            raise VlmEvalError(f"{option} is for captioning and VQA tasks, not zero-shot classification")
    if config.attack == "none":
        return None
    if config.masked_lm and config.attack not in PROMPT_ATTACKS:
        raise VlmEvalError(f"--masked-lm is BERT-Attack's, on the class prompts: use it with --attack text or "
                           f"bimodal, not {config.attack}")
    try:
        return AttackPlan.on_classifier(config.attack, config.eps, config.norm, config.steps)
    except ValueError as exc:
        raise VlmEvalError(str(exc)) from exc


def ensemble_plan(config: EvalConfig, task_card: TaskCard) -> AttackPlan:
    """The schedule of --schedule, or the task type's default in schedules/, with the attack budget and the
    threshold under which samples leave (the schedule's, else the task card's)."""
    from vlm_eval.attacks.schedule import AttackPlan, Schedule
    from vlm_eval.attacks.threat import ThreatModel

    path = Path(config.schedule) if config.schedule else cards.card_dir("schedules") / f"{task_card.type}.yaml"
    threat = ThreatModel.parse(config.eps, config.norm)
    schedule = Schedule.load(path)
    stop_below = schedule.stop_below if schedule.stop_below is not None else task_card.stop_below
    if stop_below is None:
        raise VlmEvalError(f"--attack ensemble needs the score under which a sample leaves the schedule: set "
                           f"`stop_below` in the task card {task_card.card_path} or in the schedule {path}")
    return AttackPlan.ensemble_of(schedule, threat, config.steps, stop_below)


def encoder_card(spec: str, arch: str | None = None) -> EncoderCard:
    """An encoder's card: ad hoc for a checkpoint path or hf-hub: id (the default family's), else by name."""
    from vlm_eval.encoders import DEFAULT_FAMILY, ENCODER_FAMILIES

    return ENCODER_FAMILIES.get(DEFAULT_FAMILY).card_from_spec(spec, arch) or cards.load_card("encoders", spec)


def load_encoder_card(config: EvalConfig) -> EncoderCard:
    """The card of `--encoder` (a card name, a checkpoint path or hf-hub:), checked against --resolution."""
    card = encoder_card(config.encoder, config.encoder_arch)
    if card.image_size != config.resolution:
        raise VlmEvalError(f"encoder {card.name!r} takes {card.image_size}-px images, not {config.resolution}")
    return card


def resolve_device(name: str) -> str:
    import torch  # the only torch this module touches: whether the device exists

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise VlmEvalError(f"unknown --device {name!r}: use cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VlmEvalError(f"--device {name}: no CUDA GPU is visible to torch; use --device cpu")
    return name


def preflight(plan: Plan, mode: str = "new") -> dict[str, Path]:
    """The task's data files; raises one error listing every missing resource (data, Java, weights).
    `mode`: how the run folder may be found (`check_run_dir`)."""
    check_run_dir(plan.run_dir, mode)
    problems: list[str] = []

    def attempt(check: Callable[[], T]) -> T | None:
        try:
            return check()
        except MissingResourceError as exc:
            problems.append(str(exc))
            return None

    generated = plan.task_card.generator is not None  # written below, once every other check has passed
    files = None if generated else attempt(lambda: task_files(plan))
    attempt(plan.task.check_requirements)
    for check in model_checks(plan):
        attempt(check)
    if problems:
        raise MissingResourceError("\n\n".join(problems))
    return task_files(plan) if generated else files


def task_files(plan: Plan) -> dict[str, Path]:
    """The task's data files, the mini world's written first if they are not there yet."""
    from vlm_eval.tasks.data import check_task_data, prepare_generated_data

    config, card = plan.config, plan.task_card
    data_root = optional_path(config.data_root)
    if card.generator is not None:
        prepare_generated_data(card, data_root, config.data)
    return check_task_data(card, data_root, config.data)


def model_checks(plan: Plan) -> list[Callable[[], object]]:
    """A check per weights file and tokenizer the run will load; each raises `MissingResourceError`."""
    config = plan.config
    weights_dir = optional_path(config.weights_dir)
    checks: list[Callable[[], object]] = []
    text_tower = plan.encoder_card and plan.classifier and plan.encoder_card.text_tower
    text_card = cards.load_card("encoders", text_tower) if text_tower else None  # a vision-only release's
    for card in (plan.encoder_card, plan.reference_card, plan.tau_card, text_card):
        if card is not None:
            checks.append(lambda card=card: encoder_family(card).resolve_checkpoint(card, weights_dir,
                                                                                    config.allow_download))
    for card in ((text_card or plan.encoder_card,) if plan.classifier else ()) + (plan.reference_card,):
        if card is not None:
            checks.append(lambda card=card: encoder_family(card).tokenizer_file(card))
    if plan.vlm_card is not None:
        checks.append(lambda: check_vlm_weights(plan.vlm_card, config.allow_download))
    if plan.sentence_model not in (None, "reference") and not config.allow_download:
        checks.append(lambda: check_sentence_model(plan.sentence_model))
    return checks


def check_vlm_weights(card: VlmCard, allow_download: bool) -> None:
    present, where = vlm_family(card).weights_status(card)
    if not present and not allow_download:
        raise MissingResourceError(f"weights of VLM {card.name!r} not found: {where} (or rerun with --allow-download)")


def check_sentence_model(name: str) -> None:
    from vlm_eval.encoders.sentence import sentence_model_status

    present, where = sentence_model_status(name)
    if not present:
        raise MissingResourceError(f"sentence model {name!r} of the semantic checks: {where} "
                                   "(or rerun with --allow-download, or skip it with --sentence-model none)")


def run_dir_for(config: EvalConfig, swapped: bool = True, classifier: bool = False) -> Path:
    """--output-dir, else results/<task>-<vlm>-<encoder>-<time> (zero-shot: results/<task>-<encoder>-<time>;
    the VLM's own tower: "native")."""
    if config.output_dir:
        return Path(config.output_dir)
    encoder = Path(config.encoder).stem if swapped else "native"
    models = encoder if classifier else f"{config.vlm}-{encoder}"
    return Path("results") / f"{config.task}-{models}-{time.strftime('%Y%m%d-%H%M%S')}"


def optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None
