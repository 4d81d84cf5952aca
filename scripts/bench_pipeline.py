"""Where a mini-world run's time goes: docs/performance.md, "Where the time goes".

Runs `python -m vlm_eval` on the mini world with `--timings`, for a clean captioning run and a short
captioning ensemble, and prints each run's wall time split into start-up (the interpreter and every
import), data (annotations, images), model loading, model (generation and the attack's forward and
backward passes), scoring (CIDEr inside the ensemble, the final scores and their intervals), semantic
checks, writing (records, adversarial images, snapshots, summary), other (planning, checks, progress)
and exit (the interpreter's shutdown). Nothing here is a test.

    python scripts/bench_pipeline.py                                  # 100 clean samples, a 16-sample ensemble
    python scripts/bench_pipeline.py --runs ensemble --ensemble-samples 100 --steps 100   # the ensemble's budget
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ["start-up", "data", "model loading", "model", "scoring", "semantic checks", "writing", "other", "exit"]
MINI = ["--vlm", "mini-llava", "--encoder", "mini-clip", "--task", "mini-coco", "--device", "cpu"]


def commands(args: argparse.Namespace) -> dict[str, list[str]]:
    ensemble = ["--attack", "ensemble", "--eps", "4/255", "--steps", str(args.steps),
                "--schedule", "schedules/captioning-bf16.yaml", "--n-samples", str(args.ensemble_samples)]
    return {"clean": [*MINI, "--n-samples", str(args.clean_samples)], "ensemble": [*MINI, *ensemble]}


def timed_run(options: list[str], threads: int | None, out: Path) -> dict[str, float]:
    """Seconds by phase of one run in a fresh interpreter, the start-up and exit measured from outside."""
    timings = out / "timings.json"
    command = [sys.executable, "-m", "vlm_eval", *options, "--output-dir", str(out / "run"), "--timings", str(timings)]
    if threads:
        command += ["--threads", str(threads)]
    spawned = time.time()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - spawned
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    measured = json.loads(timings.read_text())
    seconds = dict(measured["seconds"])
    seconds["start-up"] = measured["clock_started_at"] - spawned + seconds.pop("imports", 0.0)
    seconds["exit"] = wall - (measured["clock_started_at"] - spawned) - measured["total_s"]
    return {"wall": wall, **{name: seconds.get(name, 0.0) for name in PHASES}}


def table(results: dict[str, dict[str, float]]) -> str:
    names = list(results)
    lines = ["| phase | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name in PHASES:
        lines.append(f"| {name} | " + " | ".join(
            f"{r[name]:.1f} s ({100 * r[name] / r['wall']:.1f} %)" for r in results.values()) + " |")
    outside = [r["wall"] - r["model"] for r in results.values()]
    lines.append("| **outside the model** | " + " | ".join(
        f"**{o:.1f} s ({100 * o / r['wall']:.1f} %)**" for o, r in zip(outside, results.values())) + " |")
    lines.append("| wall | " + " | ".join(f"{r['wall']:.1f} s" for r in results.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="clean,ensemble", help="which runs, comma-separated (clean, ensemble)")
    parser.add_argument("--clean-samples", type=int, default=100)
    parser.add_argument("--ensemble-samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="APGD steps per run of the ensemble")
    parser.add_argument("--threads", type=int, help="torch threads (default: the toolkit's, the cores it may use)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    chosen = commands(args)
    results = {}
    for name in args.runs.split(","):
        with tempfile.TemporaryDirectory() as out:
            results[name] = timed_run(chosen[name], args.threads, Path(out))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
