"""`python -m vlm_eval rescore RUN_DIR`: every metric again from samples.jsonl, with other scoring choices.

Another answer normalisation (--vqa-normalize), another clean-up of the raw outputs (--postprocess), or
another reference set (the task's files read from --data-root / --data): no model is loaded, the raw outputs
the run saved are post-processed and scored again, intervals included. The result is a new run folder
(default RUN_DIR-rescored-<choices>) that `table`, `plot`, `report` and `compare` read like any other; the
original is never touched.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from vlm_eval import results
from vlm_eval.config import key_value
from vlm_eval.contracts import Json
from vlm_eval.errors import VlmEvalError
from vlm_eval.program import program

if TYPE_CHECKING:
    from vlm_eval.run.plan import Plan


def new_references(plan: Plan, records: list[dict]) -> dict[str, list[str]]:
    """Per evaluated sample, its references as the task's files (the new reference set) give them."""
    from vlm_eval.run.plan import task_files
    from vlm_eval.tasks.data import read_task_samples

    by_id = {sample.id: list(sample.references) for sample in read_task_samples(plan.task_card, task_files(plan))}
    missing = [r["id"] for r in records if r["id"] not in by_id]
    if missing:
        raise VlmEvalError(f"the new reference set lacks {len(missing)} of the run's {len(records)} samples "
                           f"(first: {missing[0]}); give the task's files that hold them")
    return by_id


def rescored_records(plan: Plan, records: list[dict], references: dict[str, list[str]] | None) -> list[dict]:
    """The records with outputs post-processed again from the raw ones, and the new references if given."""
    out = []
    for record in records:
        record = {**record, "output": plan.task.postprocess(record["raw_output"])}
        if "adversarial" in record:
            adversarial = record["adversarial"]
            record["adversarial"] = {**adversarial, "output": plan.task.postprocess(adversarial["raw_output"])}
        if references is not None:
            record["references"] = references[record["id"]]
        out.append(record)
    return out


def rescore(run_dir: Path, output: Path | None, **choices: Json) -> Path:
    """Score RUN_DIR's records again with `choices` (the EvalConfig fields vqa_normalize, postprocess, data_root,
    data) into a new run folder."""
    from vlm_eval.run import folder  # torch, after --help
    from vlm_eval.run.runner import read_config, saved_plan, summarize

    run_dir = Path(run_dir)
    summary = results.read_summary(run_dir)  # a finished run only
    records = results.read_samples(run_dir)
    if records and "raw_output" not in records[0]:
        raise VlmEvalError(f"{run_dir}: a zero-shot run has no text outputs to score again")
    saved = read_config(run_dir)
    changed = dict(choices)
    if "data" in choices:  # a file given here replaces the run's file of that key; the run's others stay
        changed["data"] = {**saved.get("data", {}), **choices["data"]}
    plan = saved_plan(run_dir, **changed)
    references = new_references(plan, records) if {"data_root", "data"} & set(choices) else None
    records = rescored_records(plan, records, references)
    config = {**saved, **changed, "resolved": {**saved["resolved"], **plan.task.options()}}
    new = summarize(plan, records, summary["n_skipped"], config, summary["provenance"])
    new["rescored"] = {"from": str(run_dir), "choices": choices}
    output = output or run_dir.with_name(f"{run_dir.name}-rescored-{tag(choices)}")
    if output.exists():
        raise VlmEvalError(f"{output} exists; give another --output")
    output.mkdir(parents=True)
    shutil.copy(run_dir / folder.SUBSET, output / folder.SUBSET)
    results.write_json(output / folder.CONFIG, config)
    results.write_jsonl(output / "samples.jsonl", records)
    results.write_json(output / folder.SUMMARY, new)
    return output


def tag(choices: dict[str, Json]) -> str:
    """A folder-name tag of the choices: "vqa_normalize-always+postprocess-openflamingo"."""
    return "+".join(f"{key}-{'files' if key in ('data', 'data_root') else value}" for key, value in choices.items())


def main(argv: list[str]) -> int:
    from vlm_eval.terminal import summary_table

    p = argparse.ArgumentParser(prog=program("rescore"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    p.add_argument("--vqa-normalize", choices=("official", "always"))
    p.add_argument("--postprocess", choices=("llava", "openflamingo"))
    p.add_argument("--data-root", help="the folder of the task's files holding the new reference set")
    p.add_argument("--data", action="append", default=[], metavar="KEY=PATH", help="one of the task's files")
    p.add_argument("--output", type=Path, help="the new run folder (default RUN_DIR-rescored-<choices>)")
    args = p.parse_args(argv)
    data = dict(key_value(item) for item in args.data)
    choices = {key: value for key, value in (("vqa_normalize", args.vqa_normalize), ("postprocess", args.postprocess),
                                             ("data_root", args.data_root), ("data", data)) if value}
    if not choices:
        raise VlmEvalError("nothing to change: give --vqa-normalize, --postprocess, --data-root or --data")
    print(summary_table(rescore(args.run_dir, args.output, **choices)))
    return 0
