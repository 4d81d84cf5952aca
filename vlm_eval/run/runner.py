"""One evaluation, every task type alike: plan -> samples -> model -> batches -> merge.

Order matters: every check that can fail (names, cards, device, data, Java, weights) runs before
anything heavy is loaded (`plan`), and the run folder is created only once the models are loaded
(`models`), so a failed start leaves nothing behind. The batches' records are appended as they are
made (`loop`), so a crash loses no finished work: `resume` finishes such a run, evaluating only the
samples it had not written. `merge` then turns the appended records into the scored samples.jsonl
and summary.json, the whole set at once (CIDEr is corpus-level).
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

from vlm_eval import results
from vlm_eval.config import EvalConfig
from vlm_eval.contracts import Json, Record, Step
from vlm_eval.data.samples import Sample
from vlm_eval.errors import VlmEvalError
from vlm_eval.run import loop, models
from vlm_eval.run.plan import Plan, preflight, resolve, semantic_models


def run(config: EvalConfig, resume: bool = False) -> Path:
    """Evaluate, write the run folder and return its path.

    `resume`: finish the interrupted run in `config.output_dir`: the samples it wrote are kept, the others
    evaluated, and an attack it was in the middle of continues from its saved state.
    """
    from vlm_eval.data import select_subset
    from vlm_eval.tasks.data import read_task_samples

    plan = resolve(config)
    files = preflight(plan, resume)
    samples = select_subset(read_task_samples(plan.task_card, files), plan.n_samples, plan.seed)
    plan.task.setup(files)
    if plan.replay is not None:  # every saved image there before any work
        plan.replay.check([s.id for s in samples])
    loaded = models.load(plan)

    finished = loop.finished_records(plan.run_dir, samples) if resume else []
    if not resume:
        start_run_dir(plan, samples)
    step = Step(plan.run_dir, samples, plan.attack, plan.replay, loaded.judge, resume)
    _, skipped = loop.evaluate_all(plan.task, loaded.model, samples, step, config.batch_size, config.strict,
                                   {r["id"] for r in finished})
    merge(plan, step, loaded.provenance, skipped)
    return plan.run_dir


def merge(plan: Plan, step: Step, provenance: dict[str, Json], skipped: list[dict[str, str]]) -> None:
    """Score the records the run folder holds as one set; write them back with their scores, the skipped
    samples and summary.json; drop the attack snapshot (nothing is left to resume)."""
    from vlm_eval.attacks.snapshot import clear_snapshot
    from vlm_eval.semantic import semantic_summary

    records: list[Record] = results.read_samples(plan.run_dir) if (plan.run_dir / loop.RECORDS).exists() else []
    metrics = plan.task.aggregate(records, step)
    results.replace_jsonl(plan.run_dir / loop.RECORDS, records)  # now with scores
    results.write_jsonl(plan.run_dir / "skipped.jsonl", skipped)
    summary = results.summary(full_config(plan), provenance, len(records), len(skipped), metrics,
                              semantic_summary(records))
    results.write_json(plan.run_dir / "summary.json", summary)
    clear_snapshot(plan.run_dir)


def resume(run_dir: Path) -> Path:
    """Finish an interrupted run with the settings in its config.json, on the device, in the precision and
    with the semantic checks' models it started with (so that its samples are not evaluated two ways)."""
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


def start_run_dir(plan: Plan, samples: list[Sample]) -> None:
    """Create the run folder with config.json and subset_ids.txt (once the models are loaded)."""
    from vlm_eval.data import save_subset_ids

    try:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VlmEvalError(f"cannot create the run folder {plan.run_dir}: {exc.strerror}; "
                           "choose another --output-dir") from exc
    save_subset_ids(plan.run_dir / "subset_ids.txt", samples)
    results.write_json(plan.run_dir / "config.json", full_config(plan))


def full_config(plan: Plan) -> dict[str, Json]:
    """The config as run: names resolved to cards, auto choices made, task options included."""
    attack = plan.attack or plan.replay
    resolved = {
        "vlm_card": plan.vlm_card.name if plan.vlm_card else None,
        "encoder_card": plan.encoder_card.name if plan.encoder_card else None,
        "task_card": plan.task_card.name,
        "device": plan.device,
        "precision": plan.precision,
        "n_samples": plan.n_samples,
        "seed": plan.seed,
        "attack": attack.describe() if attack else None,
        **semantic_names(plan),
        **plan.task.options(),
    }
    given = plan.config.to_dict()
    if plan.classifier:
        given["vlm"] = None  # ignored: a zero-shot run loads no VLM
    return {**given, "resolved": resolved}


def semantic_names(plan: Plan) -> dict[str, str]:
    """The semantic checks' models of an attacked VLM run, which `resume` keeps (the VLM card may change)."""
    if not plan.semantic_checked:
        return {}
    reference, sentences = semantic_models(plan.config, plan.vlm_card)
    return {"reference_encoder": reference, "sentence_model": sentences}
