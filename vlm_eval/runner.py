"""One clean evaluation: task card -> samples -> batches -> VLM -> metric -> run folder."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm_eval import cards, results
from vlm_eval.config import EvalConfig
from vlm_eval.errors import BadSampleError, VlmEvalError

log = logging.getLogger(__name__)


@dataclass
class Resolved:
    """The cards, task and models that a config names, and what the run records about them."""

    vlm_card: Any
    encoder_card: Any | None  # None in native mode
    task_card: Any
    task: Any
    device: str
    precision: str
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    records: list[dict]  # one per evaluated sample: id, output, references, score, ...
    skipped: list[dict]  # id and reason of each sample that could not be evaluated
    metrics: dict[str, float]


def run(config: EvalConfig) -> Path:
    """Evaluate, write the run folder and return its path."""
    from vlm_eval.data import save_subset_ids, select_subset
    from vlm_eval.tasks.data import check_task_data, read_task_samples

    resolved = resolve(config)
    files = check_task_data(resolved.task_card, config.data_root and Path(config.data_root), config.data)
    resolved.task.check_requirements()
    samples = select_subset(read_task_samples(resolved.task_card, files), config.n_samples, config.seed)
    run_dir = make_run_dir(config)
    save_subset_ids(run_dir / "subset_ids.txt", samples)
    results.write_json(run_dir / "config.json", full_config(config, resolved))

    vlm = load_vlm(config, resolved)
    outcome = evaluate(vlm, resolved.task, samples, config)
    write_outcome(run_dir, config, resolved, outcome)
    return run_dir


def resolve(config: EvalConfig) -> Resolved:
    """Cards and runtime choices, checked before anything heavy is loaded."""
    import torch

    from vlm_eval.tasks import TASK_TYPES

    task_card = cards.load_card("tasks", config.task)
    vlm_card = cards.load_card("vlms", config.vlm)
    encoder_card = resolve_encoder_card(config) if config.resolution == 224 else None
    device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    precision = config.precision
    if precision == "auto":
        precision = "fp16" if device.startswith("cuda") else "fp32"
    task = TASK_TYPES.get(task_card.type)(task_card, {"vqa_normalize": config.vqa_normalize})
    return Resolved(vlm_card, encoder_card, task_card, task, device, precision)


def resolve_encoder_card(config: EvalConfig) -> Any:
    from vlm_eval.encoders.openclip_family import encoder_card_from_spec

    return encoder_card_from_spec(config.encoder, arch=config.encoder_arch) or cards.load_card("encoders", config.encoder)


def load_vlm(config: EvalConfig, resolved: Resolved) -> Any:
    """The VLM adapter with the encoder swapped in; records checkpoints and hashes in provenance."""
    import torch

    from vlm_eval.encoders import ENCODER_FAMILIES
    from vlm_eval.vlms import VLM_FAMILIES

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[resolved.precision]
    encoder = None
    if resolved.encoder_card is not None:
        weights_dir = config.weights_dir and Path(config.weights_dir)
        encoder = ENCODER_FAMILIES.get(resolved.encoder_card.family)(
            resolved.encoder_card, weights_dir=weights_dir, allow_download=config.allow_download
        )
    elif config.encoder not in ("openai", "clip", "native"):
        raise VlmEvalError(
            f"--resolution 336 runs LLaVA's own 336-px tower, so --encoder {config.encoder!r} would be ignored; "
            "robust encoders are 224-px models: use --resolution 224"
        )
    vlm = VLM_FAMILIES.get(resolved.vlm_card.family)(
        resolved.vlm_card, encoder, dtype=dtype, device=resolved.device, allow_download=config.allow_download
    )
    resolved.provenance.update(provenance(resolved, encoder, vlm))
    return vlm


def provenance(resolved: Resolved, encoder: Any | None, vlm: Any) -> dict[str, Any]:
    cards_used = [c for c in (resolved.vlm_card, resolved.encoder_card, resolved.task_card) if c is not None]
    return {
        "packages": results.package_versions(),
        "git_revision": results.git_revision(cards.CARD_ROOT),
        "cards": {c.name: results.file_sha256(c.card_path) for c in cards_used if c.card_path},
        "encoder": None if encoder is None else {
            "name": encoder.card.name, "checkpoint": encoder.checkpoint, "sha256": encoder.sha256,
        },
        "vlm": {"name": resolved.vlm_card.name, "hf_id": resolved.vlm_card.hf_id, **vlm.describe()},
        "resolution": vlm.image_size,
        "precision": resolved.precision,
        "device": resolved.device,
    }


def evaluate(vlm: Any, task: Any, samples: list[Any], config: EvalConfig) -> Outcome:
    """Generate for every sample in batches, then score the whole set at once."""
    from tqdm import tqdm

    records, skipped = [], []
    with tqdm(total=len(samples), desc="generating", unit="sample") as bar:
        for start in range(0, len(samples), config.batch_size):
            chunk = samples[start : start + config.batch_size]
            batch, bad = load_batch(vlm, task, chunk, config.strict)
            skipped += bad
            if batch is not None:
                max_new = task.card.max_new_tokens
                for sample, raw in zip(batch[1], vlm.generate(batch[0], max_new)):
                    records.append(sample_record(sample, raw, task.postprocess(raw)))
            bar.update(len(chunk))
    metrics, per_item = score(task, records)
    for record in records:
        record["score"] = per_item[record["id"]]
    return Outcome(records, skipped, metrics)


def load_batch(vlm: Any, task: Any, chunk: list[Any], strict: bool) -> tuple[Any, list[dict]]:
    """((Batch, its samples) or None, skipped samples): unreadable images are skipped, or raise if strict."""
    import torch

    from vlm_eval.data import load_image, preprocess_image
    from vlm_eval.vlms.base import Batch

    pixels, kept, skipped = [], [], []
    for sample in chunk:
        try:
            pixels.append(preprocess_image(load_image(sample.image_path, sample.id), vlm.image_size))
            kept.append(sample)
        except BadSampleError as exc:
            if strict:
                raise
            log.warning("skipping %s (use --strict to stop instead)", exc)
            skipped.append({"id": sample.id, "reason": str(exc)})
    if not kept:
        return None, skipped
    prompts = [vlm.format_prompt(*task.prompt_args(s)) for s in kept]
    return (Batch([s.id for s in kept], torch.stack(pixels), prompts), kept), skipped


def sample_record(sample: Any, raw: str, output: str) -> dict:
    record = {"id": sample.id, "output": output, "raw_output": raw, "references": list(sample.references)}
    if sample.question is not None:
        record["question"] = sample.question
    record["image"] = str(sample.image_path)
    return record


def score(task: Any, records: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    if not records:
        return {task.metric: float("nan")}, {}
    refs = {r["id"]: r["references"] for r in records}
    outputs = {r["id"]: r["output"] for r in records}
    return task.score(refs, outputs)


def make_run_dir(config: EvalConfig) -> Path:
    """A fresh run folder; an existing finished run is never overwritten."""
    if config.output_dir:
        run_dir = Path(config.output_dir)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        encoder = Path(config.encoder).stem if config.resolution == 224 else "native"
        run_dir = Path("results") / f"{config.task}-{config.vlm}-{encoder}-{stamp}"
    if (run_dir / "summary.json").exists():
        raise VlmEvalError(f"{run_dir} already holds a finished run; choose another --output-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def full_config(config: EvalConfig, resolved: Resolved) -> dict[str, Any]:
    """The config as run: names resolved to cards, auto choices made, task options included."""
    resolved_names = {
        "vlm_card": resolved.vlm_card.name,
        "encoder_card": resolved.encoder_card.name if resolved.encoder_card else None,
        "task_card": resolved.task_card.name,
        "device": resolved.device,
        "precision": resolved.precision,
        **resolved.task.options(),
    }
    return {**config.to_dict(), "resolved": resolved_names}


def write_outcome(run_dir: Path, config: EvalConfig, resolved: Resolved, outcome: Outcome) -> None:
    results.write_jsonl(run_dir / "samples.jsonl", outcome.records)
    results.write_jsonl(run_dir / "skipped.jsonl", outcome.skipped)
    summary = results.summary(
        full_config(config, resolved), resolved.provenance, len(outcome.records), len(outcome.skipped), outcome.metrics
    )
    results.write_json(run_dir / "summary.json", summary)
