"""How evenly shards share a run, and what they gain: docs/performance.md, "Shards on a CPU".

Runs one mini-world attacked evaluation with 1 process and then with each --shards count (one thread
each), and watches the run folder: when each batch was claimed (its claim file) and when its records
were appended. Prints, per count: wall time, samples per hour, efficiency (speed-up / processes), the
spread of the shards' busy times (slowest / mean: the last append of each, from the start), and the
spread fixed slices would have had (each shard the same number of batches, the measured batch times
summed), the counterfactual that claims replace.

    python scripts/bench_shards.py --out /tmp/bench-shards --n-samples 48 --shards 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def watch(run_dir: Path, processes: list[subprocess.Popen], start: float) -> dict[str, list[tuple[float, float]]]:
    """Per shard tag: (claim time, append time) of each batch it evaluated, in seconds from `start`."""
    seen: set[str] = set()
    claimed: dict[str, list[float]] = {}  # per shard: when it claimed the batches not yet written
    lines: dict[str, int] = {}
    batches: dict[str, list[tuple[float, float]]] = {}
    while any(p.poll() is None for p in processes):
        now = time.monotonic() - start
        for path in (run_dir / "shards").glob("*-of-*[0-9].jsonl"):  # appends first: a claim seen now is newer
            tag, count = path.name[: -len(".jsonl")], path.read_text().count("\n")
            if count > lines.get(tag, 0):
                lines[tag] = count
                batches.setdefault(tag, []).append((claimed[tag].pop(0), now))
        for claim in sorted((run_dir / "claims").glob("batch-*")):
            if claim.name not in seen:
                try:
                    claimed.setdefault(claim.read_text().split(":")[0], []).append(now)
                except FileNotFoundError:
                    continue
                seen.add(claim.name)
        time.sleep(0.1)
    return batches


def run(args: argparse.Namespace, shards: int) -> dict:
    run_dir = args.out / f"{shards}-shards"
    command = [sys.executable, "-m", "vlm_eval", "--vlm", "mini-llava", "--encoder", "mini-clip", "--task", "mini-coco",
               "--n-samples", str(args.n_samples), "--batch-size", str(args.batch_size), "--device", "cpu",
               "--attack", "ensemble", "--schedule", "schedules/captioning-bf16.yaml", "--steps", str(args.steps),
               "--reference-encoder", "none", "--sentence-model", "none", "--output-dir", str(run_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    processes = [subprocess.Popen([*command, "--shard", f"{i}/{shards}"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(shards)]
    batches = watch(run_dir, processes, start)
    wall = time.monotonic() - start
    if any(p.returncode for p in processes):
        sys.exit(f"a shard failed; see {run_dir}")
    busy = [times[-1][1] for times in batches.values()]
    durations = [end - begin for times in batches.values() for begin, end in times]
    per_shard = -(-len(durations) // shards)  # fixed slices: contiguous runs of batches, in claim order
    ordered = [end - begin for begin, end in sorted(b for times in batches.values() for b in times)]
    fixed = [sum(ordered[i * per_shard : (i + 1) * per_shard]) for i in range(shards)]
    return {"shards": shards, "wall_s": round(wall, 1), "samples_per_hour": round(args.n_samples / wall * 3600),
            "busy_spread": round(max(busy) / statistics.mean(busy), 3),
            "fixed_slices_spread": round(max(fixed) / statistics.mean(fixed), 3),
            "batch_s": [round(d, 1) for d in ordered],
            "cider_robust": json.loads((run_dir / "summary.json").read_text())["metrics"]["cider_robust"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-samples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    results = [run(args, n) for n in [1, *args.shards]]
    for row in results:
        row["efficiency"] = round(row["samples_per_hour"] / results[0]["samples_per_hour"] / row["shards"], 3)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
