"""Write the mini world into a folder: `python -m vlm_eval.miniworld DIR [--eval-only | --sample | --sizes ...]`.

The tasks write their evaluation splits on first use by themselves; this command is for the training
recipes (`--world DIR`), for inspecting the data, and for rebuilding the sample committed for tests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlm_eval.miniworld.export import EVAL_SPLITS, SAMPLE_SIZES, SPLIT_SIZES, ensure


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlm_eval.miniworld", description=__doc__)
    p.add_argument("root", type=Path, help="folder to write (created if absent)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--eval-only", action="store_true", help="skip the 10,000 training images")
    group.add_argument("--sample", action="store_true", help=f"only the small sample committed for tests {SAMPLE_SIZES}")
    p.add_argument("--sizes", type=_sizes, default={}, metavar="SPLIT=N,...",
                   help=f"override split sizes, e.g. train=64,test=8 (default {SPLIT_SIZES})")
    p.add_argument("--workers", type=int, help="rendering processes (default: up to 4)")
    args = p.parse_args(argv)
    sizes = {**(SAMPLE_SIZES if args.sample else SPLIT_SIZES), **args.sizes}
    splits = tuple(s for s in sizes if not (args.eval_only and s not in EVAL_SPLITS))
    ensure(args.root, sizes, render_splits=splits, workers=args.workers)
    print(f"mini world written to {args.root} ({', '.join(f'{k} {v}' for k, v in sizes.items() if v)})")


def _sizes(text: str) -> dict[str, int]:
    try:
        pairs = [item.split("=") for item in text.split(",") if item]
        sizes = {split: int(n) for split, n in pairs}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected SPLIT=N,..., got {text!r}") from exc
    unknown = set(sizes) - set(SPLIT_SIZES)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown split(s) {sorted(unknown)}; known: {', '.join(SPLIT_SIZES)}")
    return sizes


if __name__ == "__main__":
    main()
