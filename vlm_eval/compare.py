"""`python -m vlm_eval compare RUN_A RUN_B`: is B's score different from A's, beyond sampling noise?

Both runs must have evaluated the same samples (same task, --n-samples and --seed). The paired bootstrap
draws the same resample of samples for both runs, recomputes each run's metrics on it (CIDEr with that
resample's idf), and takes the percentile interval of B - A. Pairing removes the between-image variance
both runs share, so it separates encoders that unpaired intervals cannot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vlm_eval.errors import VlmEvalError
from vlm_eval.metrics.bootstrap import Bootstrap
from vlm_eval.results import read_samples, read_summary
from vlm_eval.program import program


def paired_records(run_a: Path, run_b: Path, summaries: tuple[dict, dict]) -> tuple[list[dict], list[dict]]:
    """Both runs' records in A's order; refused unless they scored the same samples against the same references."""
    tasks = [s["config"]["resolved"]["task_card"] for s in summaries]
    if tasks[0] != tasks[1]:
        raise VlmEvalError(f"the runs evaluated different tasks ({tasks[0]} and {tasks[1]}): nothing to pair")
    records_a, records_b = read_samples(run_a), read_samples(run_b)
    by_id = {r["id"]: r for r in records_b}
    only_a = [r["id"] for r in records_a if r["id"] not in by_id]
    only_b = sorted(set(by_id) - {r["id"] for r in records_a})
    if only_a or only_b:
        raise VlmEvalError(
            f"the runs scored different samples ({len(only_a)} only in A, first {only_a[:3]}; {len(only_b)} only in "
            f"B, first {only_b[:3]}): a paired comparison needs the same ones. Run both with the same --task, "
            "--n-samples and --seed (and the same data, so that no sample is skipped in one run only)")
    paired_b = [by_id[r["id"]] for r in records_a]
    changed = [a["id"] for a, b in zip(records_a, paired_b) if a.get("references") != b.get("references")]
    if changed:
        raise VlmEvalError(f"{len(changed)} samples have other references in B than in A (first {changed[0]}): "
                           "the runs read different annotation files")
    return records_a, paired_b


def compare(run_a: Path, run_b: Path, bootstrap: Bootstrap) -> dict:
    """Per metric both runs report: A, B, B - A and the paired interval of B - A."""
    from vlm_eval.run.runner import saved_plan  # torch, after --help

    summary_a, summary_b = read_summary(run_a), read_summary(run_b)
    records_a, records_b = paired_records(run_a, run_b, (summary_a, summary_b))
    task_a, task_b = saved_plan(run_a).task, saved_plan(run_b).task
    if task_b.options() == task_a.options():  # one scorer: the references are tokenised once, not once per run
        task_b = task_a
    n = len(records_a)
    values_a = bootstrap.values(lambda draws: task_a.resampled(records_a, draws), n)
    values_b = bootstrap.values(lambda draws: task_b.resampled(records_b, draws), n)
    rows = {}
    for name in values_a:
        a, b = summary_a["metrics"].get(name), summary_b["metrics"].get(name)
        if name in values_b and a is not None and b is not None:
            low, high = bootstrap.interval(values_b[name] - values_a[name])
            rows[name] = {"a": a, "b": b, "difference": b - a, "interval": [low, high],
                          "b_better_share": float(np.mean(values_b[name] > values_a[name]))}
    if not rows:
        raise VlmEvalError("the runs share no metric to compare")
    return {"a": str(run_a), "b": str(run_b), "n_samples": n, "bootstrap": bootstrap.describe(), "metrics": rows}


def verdict(interval: list[float]) -> str:
    if interval[0] > 0:
        return "B higher"
    if interval[1] < 0:
        return "B lower"
    return "no clear difference"


def render(result: dict) -> str:
    level = 100 * result["bootstrap"]["level"]
    lines = [f"A  {result['a']}", f"B  {result['b']}",
             f"{result['n_samples']} paired samples, {result['bootstrap']['resamples']} paired resamples, "
             f"{level:g} % interval of B - A", "",
             f"{'metric':<24} {'A':>9} {'B':>9} {'B - A':>9}   {'interval':<20} verdict"]
    for name, row in result["metrics"].items():
        low, high = row["interval"]
        lines.append(f"{name:<24} {row['a']:>9.2f} {row['b']:>9.2f} {row['difference']:>+9.2f}   "
                     f"{f'[{low:+.2f}, {high:+.2f}]':<20} {verdict(row['interval'])}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=program("compare"),
                                description="The paired bootstrap of two finished runs on the same samples: "
                                "each shared metric's difference B - A and its confidence interval.")
    p.add_argument("run_a", metavar="RUN_A", type=Path)
    p.add_argument("run_b", metavar="RUN_B", type=Path)
    p.add_argument("--resamples", type=int, default=Bootstrap.resamples, help="default %(default)s")
    p.add_argument("--level", type=float, default=Bootstrap.level, help="default %(default)s")
    p.add_argument("--seed", type=int, default=Bootstrap.seed, help="default %(default)s")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the result as JSON")
    args = p.parse_args(argv)
    if args.resamples < 1 or not 0 < args.level < 1:
        raise VlmEvalError("--resamples must be >= 1 and --level in (0, 1), e.g. 0.95")
    result = compare(args.run_a, args.run_b, Bootstrap(args.resamples, args.level, args.seed))
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
