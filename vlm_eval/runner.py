"""One clean evaluation: task card -> samples -> batches -> VLM -> metric -> run folder.

Zero-shot classification tasks (type `zeroshot`) take a second path through the same steps: no VLM
is loaded (`--vlm` is ignored), the encoder card's whole CLIP becomes a classifier
(`vlm_eval.tasks.zeroshot`), and the run folder has the same files.

Order matters: every check that can fail (names, cards, device, data, Java, weights) runs before
anything heavy is loaded, and the run folder is created only once the models are loaded, so a
failed start leaves nothing behind. Outputs are appended to `samples.jsonl` batch by batch, so a
crash during generation or scoring loses no finished work: `resume` finishes such a run, evaluating
only the samples it had not written.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm_eval import cards, results
from vlm_eval.config import EvalConfig
from vlm_eval.errors import BadSampleError, MissingResourceError, VlmEvalError

log = logging.getLogger(__name__)


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


def run(config: EvalConfig, resume: bool = False) -> Path:
    """Evaluate, write the run folder and return its path.

    `resume`: finish the interrupted run in `config.output_dir`: the samples it wrote are kept, the others
    evaluated, and an attack it was in the middle of continues from its saved state.
    """
    from vlm_eval.attacks.saved import SavedAdversarial
    from vlm_eval.data import select_subset
    from vlm_eval.tasks.data import read_task_samples

    resolved = resolve(config)
    files = preflight(config, resolved, resume)
    samples = select_subset(read_task_samples(resolved.task_card, files), resolved.n_samples, resolved.seed)
    if resolved.zeroshot:
        return run_zeroshot(config, resolved, files, samples, resume)
    if isinstance(resolved.attack, SavedAdversarial):  # every saved image there before any work
        resolved.attack.check([s.id for s in samples])
    vlm = load_vlm(config, resolved)
    judge = load_judge(config, resolved, vlm) if resolved.attack is not None else None

    run_dir, finished = open_run_dir(config, resolved, samples, resume)
    records, skipped = generate_all(vlm, resolved.task, samples, config, run_dir, resolved.attack,
                                    {r["id"] for r in finished}, resume, judge)
    metrics = score_records(resolved.task, finished + records, resolved.attack)
    write_outcome(run_dir, config, resolved, finished + records, skipped, metrics)
    return run_dir


def run_zeroshot(config: EvalConfig, resolved: Resolved, files: dict[str, Path], samples: list[Any],
                 resume: bool) -> Path:
    """The zero-shot path of `run`: the encoder's CLIP classifies each image among the task's classes."""
    classes = resolved.task.classes(files)
    classifier = load_classifier(config, resolved, classes)

    run_dir, finished = open_run_dir(config, resolved, samples, resume)
    records, skipped = classify_all(classifier, resolved, samples, classes, config, run_dir, {r["id"] for r in finished})
    metrics = resolved.task.metrics(finished + records, len(classes))
    write_outcome(run_dir, config, resolved, finished + records, skipped, metrics)
    return run_dir


def resume(run_dir: Path) -> Path:
    """Finish an interrupted run with the settings in its config.json, on the device, in the precision and
    with the semantic checks' models it started with (so that its samples are not evaluated two ways)."""
    import os
    from dataclasses import fields

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise VlmEvalError(f"{run_dir} is not a run folder (no config.json); give the folder of the run to resume")
    saved = json.loads(path.read_text())
    given = {f.name: saved[f.name] for f in fields(EvalConfig) if f.name in saved}
    pinned = {key: saved["resolved"][key] for key in ("device", "precision")}
    pinned |= {key: saved["resolved"][key] for key in ("reference_encoder", "sentence_model") if key in saved["resolved"]}
    config = EvalConfig(**{**given, **pinned, "output_dir": str(run_dir)})
    if not config.allow_download:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return run(config, resume=True)


def open_run_dir(config: EvalConfig, resolved: Resolved, samples: list[Any], resume: bool) -> tuple[Path, list[dict]]:
    """(run folder, the records it holds already): a new folder, or the interrupted run's."""
    if not resume:
        return start_run_dir(config, resolved, samples), []
    return resolved.run_dir, finished_records(resolved.run_dir, samples)


def finished_records(run_dir: Path, samples: list[Any]) -> list[dict]:
    """The records an interrupted run wrote; a last line cut off by the interruption is dropped."""
    if (run_dir / "subset_ids.txt").read_text().split() != [str(s.id) for s in samples]:
        raise VlmEvalError(f"{run_dir}: the task's samples are not those the run started with (subset_ids.txt): "
                           "its data changed; start a new run")
    path = run_dir / "samples.jsonl"
    records, cut = results.read_jsonl(path)
    if cut:
        log.warning("dropping the last line of %s: the interruption cut it off", path)
        results.replace_jsonl(path, records)  # so that new lines do not follow the cut one
    log.warning("resuming %s: %d of %d samples done", run_dir, len(records), len(samples))
    return records


def start_run_dir(config: EvalConfig, resolved: Resolved, samples: list[Any]) -> Path:
    """Create the run folder with config.json and subset_ids.txt (once the models are loaded)."""
    from vlm_eval.data import save_subset_ids

    run_dir = make_run_dir(resolved.run_dir)
    save_subset_ids(run_dir / "subset_ids.txt", samples)
    results.write_json(run_dir / "config.json", full_config(config, resolved))
    return run_dir


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

    card, data_root = resolved.task_card, _path(config.data_root)
    generated = card.generator is not None  # written below, once every other check has passed
    files = None if generated else attempt(lambda: check_task_data(card, data_root, config.data))
    attempt(resolved.task.check_requirements)
    if resolved.encoder_card is not None:
        attempt(lambda: resolve_checkpoint(resolved.encoder_card, _path(config.weights_dir), config.allow_download))
    if resolved.zeroshot:
        attempt(lambda: tokenizer_file(resolved.encoder_card))
    else:
        present, where = vlm_status(resolved.vlm_card)
        if not present and not config.allow_download:
            problems.append(f"weights of VLM {resolved.vlm_card.name!r} not found: {where} (or rerun with --allow-download)")
    if resolved.reference_card is not None:
        attempt(lambda: resolve_checkpoint(resolved.reference_card, _path(config.weights_dir), config.allow_download))
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


def load_vlm(config: EvalConfig, resolved: Resolved) -> Any:
    """The VLM adapter with the encoder swapped in; records checkpoints and hashes in provenance."""
    from vlm_eval.encoders import ENCODER_FAMILIES
    from vlm_eval.vlms import VLM_FAMILIES

    dtype = torch_dtype(resolved.precision)
    encoder = None
    if resolved.encoder_card is not None:
        load_encoder = ENCODER_FAMILIES.get(resolved.encoder_card.family)
        encoder = load_encoder(resolved.encoder_card, weights_dir=_path(config.weights_dir), allow_download=config.allow_download)
    load = VLM_FAMILIES.get(resolved.vlm_card.family)
    vlm = load(resolved.vlm_card, encoder, dtype=dtype, device=resolved.device, allow_download=config.allow_download)
    resolved.provenance.update(provenance(resolved, encoder, vlm))
    return vlm


def load_judge(config: EvalConfig, resolved: Resolved, vlm: Any) -> Any:
    """The models of the semantic checks: the VLM's own tower, the reference CLIP, the sentence model."""
    from vlm_eval.encoders.sentence import load_sentence_model
    from vlm_eval.semantic import KEEP_CLIP_SCORE, THRESHOLDS, ReferenceClip, SemanticJudge

    reference, loaded = None, None
    if resolved.reference_card is not None:
        reference, loaded = ReferenceClip.load(resolved.reference_card, _path(config.weights_dir),
                                               config.allow_download, resolved.device)
    embed_texts = None
    if resolved.sentence_model == "reference":
        embed_texts = reference.embed_texts
    elif resolved.sentence_model is not None:
        embed_texts = load_sentence_model(resolved.sentence_model, resolved.device, config.allow_download)
    resolved.provenance["semantic"] = {
        "reference_encoder": loaded and {"name": loaded.card.name, "checkpoint": loaded.checkpoint, "sha256": loaded.sha256},
        "sentence_model": resolved.sentence_model,
        "thresholds": THRESHOLDS,
        "keep_clip_score": KEEP_CLIP_SCORE,
    }
    return SemanticJudge(vlm.image_embeddings, reference, embed_texts)


def provenance(resolved: Resolved, encoder: Any | None, vlm: Any) -> dict[str, Any]:
    random_encoder = resolved.encoder_card is not None and "random" in resolved.encoder_card.source
    return {
        **shared_provenance(resolved.vlm_card, resolved.encoder_card, resolved.task_card),
        "encoder": None if encoder is None else {
            "name": encoder.card.name, "checkpoint": encoder.checkpoint, "sha256": encoder.sha256,
        },
        "vlm": {"name": resolved.vlm_card.name, "hf_id": resolved.vlm_card.hf_id, **vlm.describe()},
        "random_weights": resolved.vlm_card.build is not None or random_encoder,
        "resolution": vlm.image_size,
        "precision": resolved.precision,
        "device": resolved.device,
    }


def shared_provenance(*cards_used: Any) -> dict[str, Any]:
    """Package versions, the toolkit's git revision and the sha256 of each card used (None: not used)."""
    return {
        "packages": results.package_versions(),
        "git_revision": results.git_revision(cards.CARD_ROOT),
        "cards": {c.name: results.file_sha256(c.card_path) for c in cards_used if c is not None and c.card_path},
    }


def torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def load_classifier(config: EvalConfig, resolved: Resolved, classes: list[Any]) -> Any:
    """The encoder's zero-shot classifier over `classes`; records checkpoint and hashes in provenance."""
    from vlm_eval.tasks.zeroshot import load_zeroshot_classifier

    classifier, loaded = load_zeroshot_classifier(
        resolved.encoder_card, [c.name for c in classes], resolved.task.templates,
        weights_dir=_path(config.weights_dir), allow_download=config.allow_download,
        device=resolved.device, dtype=torch_dtype(resolved.precision),
    )
    resolved.provenance.update(zeroshot_provenance(resolved, loaded, len(classes)))
    return classifier


def zeroshot_provenance(resolved: Resolved, loaded: Any, n_classes: int) -> dict[str, Any]:
    """As `provenance`, with the tokenizer's file hash and no VLM."""
    from vlm_eval.encoders.text import tokenizer_file

    card = resolved.encoder_card
    tokenizer = tokenizer_file(card)
    return {
        **shared_provenance(card, resolved.task_card),
        "encoder": {
            "name": card.name, "checkpoint": loaded.checkpoint, "sha256": loaded.sha256,
            "tokenizer": card.tokenizer, "tokenizer_sha256": tokenizer and results.file_sha256(tokenizer),
        },
        "vlm": None,
        "random_weights": "random" in card.source,
        "resolution": loaded.image_size,
        "precision": resolved.precision,
        "device": resolved.device,
        "n_classes": n_classes,
    }


def classify_all(classifier: Any, resolved: Resolved, samples: list[Any], classes: list[Any], config: EvalConfig,
                 run_dir: Path, finished: Collection[Any] = ()) -> tuple[list[dict], list[dict]]:
    """Classify every sample not `finished` in batches, appending each batch's records (with scores) to
    samples.jsonl."""
    import torch

    from vlm_eval.data import preprocess_clip_image

    @torch.no_grad()
    def classify(kept: list[Any], pixels: Any) -> list[dict]:
        return resolved.task.records(kept, classifier(pixels.to(resolved.device)), classes)

    return in_batches(samples, lambda image: preprocess_clip_image(image, classifier.image_size), classify,
                      config, run_dir, "classifying", finished)


def generate_all(vlm: Any, task: Any, samples: list[Any], config: EvalConfig, run_dir: Path,
                 attack: Any | None = None, finished: Collection[Any] = (), resuming: bool = False,
                 judge: Any | None = None) -> tuple[list[dict], list[dict]]:
    """Generate for every sample not `finished`, in batches (and, with an attack, again on the attacked
    images, judged by the semantic checks' `judge`), appending each batch's records to samples.jsonl.
    `resuming`: an interrupted attack goes on."""
    from vlm_eval.data import preprocess_image
    from vlm_eval.vlms.base import Batch

    all_refs = {s.id: list(s.references) for s in samples}  # the ensemble scores samples against the whole set

    def generate(kept: list[Any], pixels: Any) -> list[dict]:
        batch = Batch([s.id for s in kept], pixels, [vlm.format_prompt(*task.prompt_args(s)) for s in kept])
        with clean_precision(vlm, attack):
            outputs = vlm.generate(batch, task.card.max_new_tokens)
        records = [sample_record(s, raw, task.postprocess(raw)) for s, raw in zip(kept, outputs)]
        if attack is not None:
            if attack.name == "ensemble":
                x_adv = add_ensemble_outputs(vlm, task, batch, kept, records, attack, run_dir, all_refs)
            else:
                x_adv = add_attacked_outputs(vlm, task, batch, kept, records, attack, run_dir, resuming)
            add_semantic_checks(records, batch.pixels, x_adv, judge, attack.targeted)
        return records

    desc = "generating" if attack is None else f"generating, {attack.name}"
    return in_batches(samples, lambda image: preprocess_image(image, vlm.image_size), generate, config, run_dir, desc,
                      finished)


def clean_precision(vlm: Any, attack: Any | None) -> Any:
    """The ensemble's clean pass runs in its first run's precision (fp16 in the reference); others as loaded."""
    import contextlib

    from vlm_eval.attacks.ensemble import precision

    if attack is None or attack.name != "ensemble":
        return contextlib.nullcontext()
    return precision(vlm.device, attack.clean_precision)


def add_attacked_outputs(vlm: Any, task: Any, batch: Any, kept: list[Any], records: list[dict], attack: Any,
                         run_dir: Path, resuming: bool) -> Any:
    """Attack the batch (away from each sample's reference, or towards the target) and record what the VLM
    says then; returns the adversarial images."""
    from vlm_eval.attacks.saved import SavedAdversarial, save_adversarial
    from vlm_eval.attacks.snapshot import AttackSnapshot
    from vlm_eval.attacks.vlm import attack_batch, target_hit
    from vlm_eval.vlms.base import Batch

    references = [task.attack_texts(s)[0] for s in kept]
    if isinstance(attack, SavedAdversarial):
        x_adv, texts, losses, steps = attack.load(batch.ids), references, [None] * len(kept), [None] * len(kept)
    else:
        settings = {**attack.describe(), "dtype": str(vlm.dtype)}
        with AttackSnapshot(run_dir, batch.ids, settings, attack.steps, f"attacking {len(kept)} samples",
                            resuming) as hook:
            result, texts = attack_batch(vlm, batch, references, attack, task.card.max_new_tokens, hook)
        x_adv, losses, steps = result.x_adv, result.loss.tolist(), result.steps.tolist()
        save_adversarial(run_dir, batch.ids, x_adv)
    outputs = vlm.generate(Batch(batch.ids, x_adv, batch.prompts), task.card.max_new_tokens)
    for record, text, raw, loss, ran in zip(records, texts, outputs, losses, steps):
        record["adversarial"] = {"output": task.postprocess(raw), "raw_output": raw, "target": text,
                                 "loss": loss, "steps": ran, "attack": attack.name}
        if attack.targeted:  # success is judged on the raw output: post-processing may cut the target
            record["adversarial"]["target_in_output"], record["adversarial"]["exact_match"] = target_hit(raw, text)
    return x_adv


def add_ensemble_outputs(vlm: Any, task: Any, batch: Any, kept: list[Any], records: list[dict], spec: Any,
                         run_dir: Path, all_refs: dict[str, list[str]]) -> Any:
    """Run the ensemble schedule on the batch; each record gets its worst output and the run that made it.
    Returns the worst-case images."""
    from vlm_eval.attacks.ensemble import run_schedule
    from vlm_eval.attacks.saved import save_adversarial
    from vlm_eval.attacks.snapshot import AttackProgress

    def generate(sub: Any) -> list[str]:
        return vlm.generate(sub, task.card.max_new_tokens)

    def score(rows: list[int], raw: list[str]) -> list[float]:
        # Per-sample scores depend on the other samples' references (CIDEr's idf), not on their outputs.
        outputs = dict.fromkeys(all_refs, "") | {batch.ids[i]: task.postprocess(r) for i, r in zip(rows, raw)}
        _, per_item = task.score(all_refs, outputs)
        return [per_item[batch.ids[i]] for i in rows]

    clean = [r["raw_output"] for r in records]
    worst = run_schedule(vlm, batch, [task.attack_texts(s) for s in kept], clean, score(list(range(len(kept))), clean),
                         spec, generate, score, lambda label: AttackProgress(spec.steps, label))
    save_adversarial(run_dir, batch.ids, worst["pixels"])
    for i, record in enumerate(records):
        record["adversarial"] = {"output": task.postprocess(worst["output"][i]), "raw_output": worst["output"][i],
                                 "target": worst["text"][i], "attack": worst["by"][i], "runs": worst["runs"][i]}
    return worst["pixels"]


def add_semantic_checks(records: list[dict], clean: Any, adversarial: Any, judge: Any, targeted: bool) -> None:
    """Each attacked record gets its perturbation's size and the `judge`'s semantic checks (vlm_eval.semantic)."""
    from vlm_eval.metrics.similarity import perturbation_norms

    outputs = [[r["raw_output"] for r in records], [r["adversarial"]["raw_output"] for r in records]]
    targets = [r["adversarial"]["target"] for r in records] if targeted else None
    checks = judge.check(clean, adversarial, *outputs, targets)
    for record, size, check in zip(records, perturbation_norms(clean, adversarial), checks):
        record["adversarial"].update(perturbation=size, semantic=check)


def in_batches(samples: list[Any], preprocess: Any, evaluate: Any, config: EvalConfig, run_dir: Path,
               desc: str, finished: Collection[Any] = ()) -> tuple[list[dict], list[dict]]:
    """(records, skipped): `evaluate(samples, pixels) -> records` per batch of loadable images, each
    batch's records appended to samples.jsonl at once, so a crash loses no finished work.

    Batches are cut from the whole list and then drop the `finished` samples, so a resumed run meets
    the batches of the interrupted one (and the attack state saved for one of them).
    """
    import torch
    from tqdm import tqdm

    records, skipped = [], []
    with tqdm(total=len(samples), desc=desc, unit="sample") as bar:
        for start in range(0, len(samples), config.batch_size):
            chunk = [s for s in samples[start : start + config.batch_size] if s.id not in finished]
            bar.update(min(config.batch_size, len(samples) - start) - len(chunk))
            if not chunk:
                continue
            pixels, kept, bad = load_pixels(chunk, preprocess, config.strict)
            skipped += bad
            if kept:
                new = evaluate(kept, torch.stack(pixels))
                results.append_jsonl(run_dir / "samples.jsonl", new)
                records += new
            bar.update(len(chunk))
    return records, skipped


def load_pixels(chunk: list[Any], preprocess: Any, strict: bool) -> tuple[list[Any], list[Any], list[dict]]:
    """(pixel tensors, the samples they belong to, skipped samples); bad images are skipped, or raise if strict."""
    from vlm_eval.data import load_image

    pixels, kept, skipped = [], [], []
    for sample in chunk:
        try:
            pixels.append(preprocess(load_image(sample.image_path, sample.id)))
            kept.append(sample)
        except BadSampleError as exc:
            if strict:
                raise
            log.warning("skipping %s (use --strict to stop instead)", exc)
            skipped.append({"id": sample.id, "reason": str(exc)})
    return pixels, kept, skipped


def sample_record(sample: Any, raw: str, output: str) -> dict:
    record = {"id": sample.id, "output": output, "raw_output": raw, "references": list(sample.references)}
    if sample.question is not None:
        record["question"] = sample.question
    record["image"] = str(sample.image_path)
    return record


def score_records(task: Any, records: list[dict], attack: Any | None = None) -> dict[str, float]:
    """Score the whole set at once (CIDEr is corpus-level) and put each sample's score in its record."""
    if not records:
        return {task.metric: float("nan")}
    refs = {r["id"]: r["references"] for r in records}
    outputs = {r["id"]: r["output"] for r in records}
    metrics, per_item = task.score(refs, outputs)
    for record in records:
        record["score"] = per_item[record["id"]]
    if "adversarial" in records[0]:
        targeted = "target_in_output" in records[0]["adversarial"]
        stopped_early = getattr(attack, "check_every", 0) > 0
        metrics.update(score_targeted(task, records, refs, stopped_early) if targeted
                       else score_untargeted(task, records, refs, ensemble=getattr(attack, "name", "") == "ensemble"))
    return metrics


def score_untargeted(task: Any, records: list[dict], refs: dict[str, list[str]], ensemble: bool) -> dict[str, float]:
    """The robust score (the papers' ensemble number) and, for a single attack, the score of the attacked
    outputs alone (what RobustVLM's --attack apgd prints). An ensemble's worst case already counts the
    clean pass, so its attacked score would repeat its robust one."""
    attacked = {f"{name}_attacked": value for name, value in score_attacked(task, records, refs).items()}
    return {**({} if ensemble else attacked), **score_robust(task, records, refs)}


def score_targeted(task: Any, records: list[dict], refs: dict[str, list[str]], stopped_early: bool) -> dict[str, float]:
    """Success rates of a targeted attack (x100) and the task metric of the attacked outputs; with
    `stopped_early` (--check-every), the median steps the successful samples took."""
    metrics = score_attacked(task, records, refs)

    def share(key: str) -> float:
        return 100.0 * sum(r["adversarial"][key] for r in records) / len(records)

    rates = {"target_success_rate": share("target_in_output"), "target_exact_match_rate": share("exact_match")}
    if stopped_early:
        steps = [r["adversarial"]["steps"] for r in records if r["adversarial"]["target_in_output"]]
        rates["target_steps_median"] = float(statistics.median(steps)) if steps else float("nan")
    return {**rates, **{f"{name}_attacked": value for name, value in metrics.items()}}


def score_attacked(task: Any, records: list[dict], refs: dict[str, list[str]]) -> dict[str, float]:
    """Score the attacked outputs as a set; each record's `adversarial.score`, and the corpus metrics."""
    metrics, per_item = task.score(refs, {r["id"]: r["adversarial"]["output"] for r in records})
    for record in records:
        record["adversarial"]["score"] = per_item[record["id"]]
    return metrics


def score_robust(task: Any, records: list[dict], refs: dict[str, list[str]]) -> dict[str, float]:
    """The robust score: per sample the worst of the clean and the attacked output, scored as a set.

    Per-sample CIDEr depends on the references only (its idf comes from them), so the worst output's
    score does not change when the set is scored again, and robust <= clean holds exactly. Needs the
    records' attacked scores (`score_attacked`).
    """
    worst = {}
    for record in records:
        clean_is_worse = record["score"] <= record["adversarial"]["score"]
        worst[record["id"]] = record["output"] if clean_is_worse else record["adversarial"]["output"]
    metrics, per_item = task.score(refs, worst)
    for record in records:
        record["score_robust"] = per_item[record["id"]]
    return {f"{name}_robust": value for name, value in metrics.items()}


def run_dir_for(config: EvalConfig, zeroshot: bool = False) -> Path:
    """--output-dir, else results/<task>-<vlm>-<encoder>-<time> (zero-shot: results/<task>-<encoder>-<time>)."""
    if config.output_dir:
        return Path(config.output_dir)
    encoder = Path(config.encoder).stem if config.resolution == 224 or zeroshot else "native"
    models = encoder if zeroshot else f"{config.vlm}-{encoder}"
    return Path("results") / f"{config.task}-{models}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_run_dir(run_dir: Path) -> Path:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VlmEvalError(f"cannot create the run folder {run_dir}: {exc.strerror}; choose another --output-dir") from exc
    return run_dir


def full_config(config: EvalConfig, resolved: Resolved) -> dict[str, Any]:
    """The config as run: names resolved to cards, auto choices made, task options included."""
    resolved_names = {
        "vlm_card": resolved.vlm_card.name if resolved.vlm_card else None,
        "encoder_card": resolved.encoder_card.name if resolved.encoder_card else None,
        "task_card": resolved.task_card.name,
        "device": resolved.device,
        "precision": resolved.precision,
        "n_samples": resolved.n_samples,
        "seed": resolved.seed,
        "attack": resolved.attack.describe() if resolved.attack else None,
        **semantic_names(config, resolved),
        **resolved.task.options(),
    }
    given = config.to_dict()
    if resolved.zeroshot:
        given["vlm"] = None  # ignored: a zero-shot run loads no VLM
    return {**given, "resolved": resolved_names}


def semantic_names(config: EvalConfig, resolved: Resolved) -> dict[str, str]:
    """The semantic checks' models of an attacked run, which `resume` keeps (the VLM card may change)."""
    if resolved.attack is None:
        return {}
    reference, sentences = semantic_models(config, resolved.vlm_card)
    return {"reference_encoder": reference, "sentence_model": sentences}


def write_outcome(run_dir: Path, config: EvalConfig, resolved: Resolved, records: list[dict],
                  skipped: list[dict], metrics: dict[str, float]) -> None:
    from vlm_eval.attacks.snapshot import clear_snapshot
    from vlm_eval.semantic import semantic_summary

    results.replace_jsonl(run_dir / "samples.jsonl", records)  # now with scores
    results.write_jsonl(run_dir / "skipped.jsonl", skipped)
    summary = results.summary(full_config(config, resolved), resolved.provenance, len(records), len(skipped), metrics,
                              semantic_summary(records))
    results.write_json(run_dir / "summary.json", summary)
    clear_snapshot(run_dir)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
