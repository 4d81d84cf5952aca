"""The mini world's zero-shot robustness table (docs/defenses.md): clean and robust accuracy under APGD-CE
and AutoAttack at 1, 2 and 4/255, for the undefended mini CLIP with and without TTC (non-adaptive and
adaptive) and for the robust mini encoders. Runs the CLI once per cell, skipping cells already run, then
prints `python -m vlm_eval table` over them.

    python scripts/miniworld_zeroshot_table.py --out results/zs-table --n-samples 120 --steps 100
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

EPS = ("1/255", "2/255", "4/255")
ATTACKS = ("apgd-ce", "autoattack")
DEFENDED = {"ttc": ["--defense", "ttc"], "ttc-adaptive": ["--defense", "ttc", "--adaptive"]}


def cells(encoders: list[str], attacks: list[str] = ATTACKS) -> list[tuple[str, list[str]]]:
    """(folder, CLI arguments) of every cell, one folder per attack (a table each): each encoder plain, the
    first also behind TTC. Attacked runs record the clean accuracy too, so no clean runs are needed."""
    out = []
    for encoder in encoders:
        variants = {"": []} | (DEFENDED if encoder == encoders[0] else {})
        for variant, extra in variants.items():
            name = f"{encoder}{'-' + variant if variant else ''}"
            for attack in attacks:
                for eps in EPS:
                    out.append((f"{attack}/{name}-{eps.replace('/', '_')}",
                                ["--encoder", encoder, "--attack", attack, "--eps", eps, *extra]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--encoders", nargs="+", default=["mini-clip", "mini-fare4", "mini-fare2", "mini-simclip4"])
    parser.add_argument("--n-samples", default="120")
    parser.add_argument("--steps", default="100")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--eot-samples", default="1", help="of the adaptive attack through TTC")
    args = parser.parse_args()
    for name, cli in cells(args.encoders, args.attacks):
        if "--adaptive" in cli:
            cli = [*cli, "--eot-samples", args.eot_samples]
        folder = args.out / name
        if (folder / "summary.json").is_file():
            continue
        if (folder / "subset_ids.txt").is_file():  # interrupted: finish it
            command = [sys.executable, "-m", "vlm_eval", "resume", str(folder)]
        else:
            command = [sys.executable, "-m", "vlm_eval", "--task", "mini-zeroshot", "--n-samples", args.n_samples,
                       "--steps", args.steps, "--device", "cpu", *cli, "--output-dir", str(folder)]
        print(" ".join(command[1:]), flush=True)
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            sys.exit(f"failed ({done.returncode}):\n{done.stderr[-3000:]}")
    for attack in args.attacks:
        print(f"\n## {attack}, {args.n_samples} images, {args.steps} steps", flush=True)
        subprocess.run([sys.executable, "-m", "vlm_eval", "table", str(args.out / attack)], check=True)


if __name__ == "__main__":
    main()
