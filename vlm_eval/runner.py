"""One clean evaluation: task card -> samples -> batches -> VLM -> metric -> run folder.

Zero-shot classification tasks (type `zeroshot`) take a second path through the same steps: no VLM
is loaded (`--vlm` is ignored), the encoder card's whole CLIP becomes a classifier
(`vlm_eval.tasks.zeroshot`), and the run folder has the same files.

Order matters: every check that can fail (names, cards, device, data, Java, weights) runs before
anything heavy is loaded (`vlm_eval.plan`), and the run folder is created only once the models are
loaded, so a failed start leaves nothing behind. Outputs are appended to `samples.jsonl` batch by
batch, so a crash during generation or scoring loses no finished work: `resume` finishes such a run,
evaluating only the samples it had not written. The whole set is scored at the end
(`vlm_eval.scoring`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

from vlm_eval import cards, results, scoring
from vlm_eval.config import EvalConfig
from vlm_eval.errors import BadSampleError, VlmEvalError
from vlm_eval.plan import Resolved, optional_path, preflight, resolve, semantic_models

log = logging.getLogger(__name__)


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
    metrics = scoring.score_records(resolved.task, finished + records, resolved.attack)
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


def load_vlm(config: EvalConfig, resolved: Resolved) -> Any:
    """The VLM adapter with the encoder swapped in; records checkpoints and hashes in provenance."""
    from vlm_eval.encoders import ENCODER_FAMILIES
    from vlm_eval.vlms import VLM_FAMILIES

    dtype = torch_dtype(resolved.precision)
    encoder = None
    if resolved.encoder_card is not None:
        load_encoder = ENCODER_FAMILIES.get(resolved.encoder_card.family)
        encoder = load_encoder(resolved.encoder_card, weights_dir=optional_path(config.weights_dir), allow_download=config.allow_download)
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
        reference, loaded = ReferenceClip.load(resolved.reference_card, optional_path(config.weights_dir),
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
        weights_dir=optional_path(config.weights_dir), allow_download=config.allow_download,
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
    """The clean pass's autocast: an ensemble's first run's precision (fp16, as the reference's fp16 model);
    none otherwise, the weights' own dtype."""
    from vlm_eval.attacks.ensemble import precision

    return precision(vlm.device, getattr(attack, "clean_precision", "fp32"))


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
