"""Measure the mini world's models with the toolkit's own evaluation, next to their reference points.

    python scripts/mini_world_quality.py            # test splits (a few minutes on 2 cores)

Runs `python -m vlm_eval` on mini-coco, mini-vqa and mini-zeroshot (whole test splits) and on the
sample committed in assets/miniworld/sample, then writes:
  * assets/miniworld/quality.json: the test-split scores with chance level, human-style ceiling and
    majority baseline (the numbers in docs/miniworld.md);
  * assets/miniworld/sample_scores.json: the scores on the committed sample, which the tests
    reproduce from the committed weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets" / "miniworld"
RUNS = {"mini-coco": "cider", "mini-vqa": "vqa_accuracy", "mini-zeroshot": "accuracy"}


def evaluate(task: str, out: Path, data_root: Path | None) -> tuple[dict, list[dict]]:
    """Run the CLI on a whole split; (summary metrics, per-sample records)."""
    from vlm_eval.cli import main as cli

    argv = ["--vlm", "mini-llava", "--encoder", "mini-clip", "--task", task, "--n-samples", "all",
            "--output-dir", str(out), "--batch-size", "50"]
    if data_root is not None:
        argv += ["--data-root", str(data_root)]
    if cli(argv) != 0:
        raise SystemExit(f"evaluation of {task} failed")
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return summary["metrics"], records


def reference_points(task: str, records: list[dict], root: Path) -> dict[str, float]:
    from vlm_eval.miniworld.quality import ceiling_cider, chance_cider, majority_vqa_accuracy

    if task == "mini-coco":
        refs = {r["id"]: r["references"] for r in records}
        return {"chance": chance_cider(refs, {r["id"]: r["output"] for r in records}), "ceiling": ceiling_cider(refs)}
    if task == "mini-vqa":
        vqa = root / "vqa"
        return {"majority": majority_vqa_accuracy(vqa / "miniworld_train_annotations.json",
                                                  vqa / "miniworld_test_annotations.json")}
    return {}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=REPO / "results" / f"miniworld-quality-{time.strftime('%Y%m%d-%H%M%S')}")
    args = p.parse_args(argv)
    from vlm_eval.miniworld.export import ensure_eval_data
    from vlm_eval.tasks.data import generated_root

    root = ensure_eval_data(generated_root("miniworld"))
    sample_copy = Path(tempfile.mkdtemp()) / "sample"  # evaluation never writes into the repository
    shutil.copytree(ASSETS / "sample", sample_copy)
    quality, sample = {}, {}
    for task, metric in RUNS.items():
        metrics, records = evaluate(task, args.runs / task, None)
        quality[task] = {metric: metrics[metric], "n": len(records), **reference_points(task, records, root)}
        sample_metrics, sample_records = evaluate(task, args.runs / f"{task}-sample", sample_copy)
        sample[task] = {metric: sample_metrics[metric], "n": len(sample_records)}
    (ASSETS / "quality.json").write_text(json.dumps(quality, indent=2) + "\n")
    (ASSETS / "sample_scores.json").write_text(json.dumps(sample, indent=2) + "\n")
    print(json.dumps({"test split": quality, "committed sample": sample}, indent=2))


if __name__ == "__main__":
    main()
