"""One evaluation, every task type alike: plan -> samples -> model -> batches -> merge.

Order matters: every check that can fail (names, cards, device, data, Java, weights) runs before
anything heavy is loaded (`plan`), and the run folder is written only once the models are loaded
(`models`), so a failed start leaves nothing behind. A run is one or more shards (`run.shard`) that
share its folder (`run.folder`): each takes batches and appends their records to its own file
(`loop`), so a crash loses no finished work and `resume`, with any number of shards, evaluates only
the samples no shard wrote. The last shard to finish merges: every shard's records scored as one
set (CIDEr is corpus-level), into samples.jsonl and summary.json.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
import time
from dataclasses import fields
from pathlib import Path

from vlm_eval import results
from vlm_eval.config import EvalConfig
from vlm_eval.contracts import Json, Step
from vlm_eval.errors import VlmEvalError
from vlm_eval.run import folder, loop, models
from vlm_eval.run.claims import CLAIMS, Claims
from vlm_eval.run.plan import Plan, preflight, resolve, semantic_models, task_files
from vlm_eval.run.shard import Shard
from vlm_eval.timing import DATA, MODEL_LOADING, SCORING, phase

log = logging.getLogger(__name__)

MERGE = "merge"  # the claim of the shard that merges


def run(config: EvalConfig, resume: bool = False, shard: Shard = Shard()) -> Path:
    """Evaluate this shard's part of the run (all of it, unsharded), merge once every shard is done, and
    return the run folder.

    `resume`: finish the interrupted run in `config.output_dir`. A shard of several (`shard.count > 1`)
    always may: it joins the run its siblings started, or finishes the one they left.
    """
    from vlm_eval.data import select_subset
    from vlm_eval.tasks.data import read_task_samples

    if shard.count > 1 and not config.output_dir:
        raise VlmEvalError(f"shard {shard.tag}: the shards of a run write into one folder: give --output-dir")
    if not config.allow_download:  # before anything imports huggingface_hub, which reads it once
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    plan = resolve(config, shard)
    if shard.count > 1 and folder.merged(plan.run_dir):  # a late shard (a queued array task): nothing left
        folder.check_same_config(plan.run_dir, full_config(plan))
        log.warning("%s is finished: nothing left for shard %s", plan.run_dir, shard.tag)
        return plan.run_dir
    files = preflight(plan, "resume" if resume else "join" if shard.count > 1 else "new")
    with phase(DATA):
        samples = select_subset(read_task_samples(plan.task_card, files), plan.n_samples, plan.seed)
        plan.task.setup(files)
        if plan.replay is not None:  # every saved image there before any work
            plan.replay.check([s.id for s in samples])
    with phase(MODEL_LOADING):
        loaded = models.load(plan)

    folder.start_or_join(plan.run_dir, full_config(plan), samples)
    folder.write_provenance(plan.run_dir, shard.tag, loaded.provenance)
    step = Step(plan.run_dir, samples, plan.attack, plan.replay, loaded.judge)
    print(f"run folder {plan.run_dir}; if interrupted: {resume_command(plan.run_dir)}", file=sys.stderr)
    try:
        with Claims(plan.run_dir, shard.tag) as claims:
            loop.evaluate_shard(plan.task, loaded.model, samples, step, config.batch_size, config.strict, claims,
                                shard.tag)
            merging = wait_to_merge(plan.run_dir, claims)
            if merging:
                merge(plan.run_dir, plan=plan)
    except KeyboardInterrupt:
        print(f"\nstopped: the finished samples are kept in {plan.run_dir}; to finish the run: "
              f"{resume_command(plan.run_dir)}", file=sys.stderr)
        raise
    if merging:
        shutil.rmtree(plan.run_dir / CLAIMS, ignore_errors=True)
    return plan.run_dir


def resume_command(run_dir: Path) -> str:
    return f"python -m vlm_eval resume {shlex.quote(str(run_dir))}"


def wait_to_merge(run_dir: Path, claims: Claims) -> bool:
    """True if this shard is the one to merge; False once another has (shards finishing together wait for it)."""
    while not folder.merged(run_dir):
        if claims.take(MERGE):
            return True
        time.sleep(loop.WAIT_S)
    return False


def merge(run_dir: Path, partial: bool = False, plan: Plan | None = None) -> Path:
    """Score every shard's records as one set, in subset order, each sample once, and write samples.jsonl,
    skipped.jsonl and summary.json; idempotent. Samples without a record are refused unless `partial`
    (the summary then says so and the run stays resumable). `plan`: the running shard's, else made from
    config.json (on the CPU: scoring needs no accelerator)."""
    from vlm_eval.attacks.snapshot import STATE_DIR

    run_dir = Path(run_dir)
    saved = read_config(run_dir)
    if plan is None:
        plan = saved_plan(run_dir)
        plan.task.setup(task_files(plan))
    ids = folder.subset_ids(run_dir)
    done, skipped = folder.gather(run_dir)
    missing = [i for i in ids if i not in done and i not in skipped]
    if missing and not partial:
        raise VlmEvalError(f"{run_dir}: {len(missing)} of {len(ids)} samples have no record yet (first: "
                           f"{missing[0]}); finish them (python -m vlm_eval resume {run_dir}, or let the running "
                           "shards finish), or merge what there is with --partial")
    records = [done[i] for i in ids if i in done]
    skips = [skipped[i] for i in ids if i in skipped and i not in done]
    summary = summarize(plan, records, len(skips), saved, folder.read_provenance(run_dir))
    results.replace_jsonl(run_dir / "samples.jsonl", records)  # now with scores
    results.replace_jsonl(run_dir / "skipped.jsonl", skips)
    if missing:
        summary |= {"partial": True, "n_missing": len(missing)}
    results.swap_in(run_dir / folder.SUMMARY, lambda path: results.write_json(path, summary))
    if not missing:
        shutil.rmtree(run_dir / STATE_DIR, ignore_errors=True)  # nothing is left to resume
    return run_dir


def summarize(plan: Plan, records: list[Json], n_skipped: int, config: dict[str, Json],
              provenance: dict[str, Json]) -> dict[str, Json]:
    """Score the records as one set (each gets its scores), with a bootstrap interval on every metric: the
    summary.json object."""
    from vlm_eval.metrics.bootstrap import Bootstrap
    from vlm_eval.semantic import semantic_summary

    with phase(SCORING):
        metrics = plan.task.aggregate(records, Step(plan.run_dir, [], plan.attack, plan.replay))
        bootstrap = Bootstrap(resamples=plan.config.bootstrap)
        intervals = bootstrap.intervals(lambda draws: plan.task.resampled(records, draws), len(records))
        intervals = {name: interval for name, interval in intervals.items() if metrics.get(name) is not None}
        semantic = semantic_summary(records)
    return results.summary(config, provenance, len(records), n_skipped, metrics, semantic, intervals,
                           bootstrap.describe())


def saved_plan(run_dir: Path, **override: Json) -> Plan:
    """The plan a run folder's config.json records, on the CPU (scoring needs no accelerator); `override`:
    EvalConfig fields to change (a rescore's scoring options)."""
    return resolve(config_from_saved(read_config(run_dir), Path(run_dir), device="cpu", **override))


def resume(run_dir: Path, shard: Shard = Shard()) -> Path:
    """Finish an interrupted run with the settings in its config.json, on the device, in the precision and
    with the semantic checks' models it started with (so that its samples are not evaluated two ways)."""
    return run(config_from_saved(read_config(run_dir), run_dir), resume=True, shard=shard)


def complete(config: EvalConfig, shard: Shard = Shard()) -> Path:
    """The run in `config.output_dir` however far it got: left alone if finished, resumed if started, else
    started (a suite's members, a sweep's cells)."""
    run_dir = Path(config.output_dir)
    if folder.merged(run_dir):
        log.info("%s is finished, skipped", run_dir)
        return run_dir
    if (run_dir / folder.SUBSET).is_file():
        return resume(run_dir, shard)
    return run(config, shard=shard)


def read_config(run_dir: Path) -> dict[str, Json]:
    path = Path(run_dir) / folder.CONFIG
    if not path.is_file():
        raise VlmEvalError(f"{run_dir} is not a run folder (no config.json); give the folder of a run")
    return json.loads(path.read_text())


def config_from_saved(saved: dict[str, Json], run_dir: Path, **override: Json) -> EvalConfig:
    """The EvalConfig a run folder's config.json records, pinned to the choices it resolved."""
    given = {f.name: saved[f.name] for f in fields(EvalConfig) if f.name in saved}
    pinned = {key: saved["resolved"][key] for key in ("device", "precision")}
    pinned |= {key: saved["resolved"][key] for key in ("reference_encoder", "sentence_model") if key in saved["resolved"]}
    return EvalConfig(**{**given, **pinned, "output_dir": str(run_dir), **override})


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
