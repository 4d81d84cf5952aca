"""`python -m vlm_eval finetune RECIPE [--output-dir DIR] [--key value ...]`, and `--resume RUN_DIR`."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from vlm_eval.errors import VlmEvalError
from vlm_eval.program import program


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program("finetune"),
        description="Adversarially fine-tune a CLIP encoder (fare, tecoa, simclip, simclip-released, mmcoa) as a "
        "recipe says, and export it with its encoder card: then evaluate it with --encoder RUN_DIR. Any recipe "
        "field can be overridden: --steps 200 --inner.steps 5. Several processes: accelerate launch -m vlm_eval "
        "finetune ... (GPUs) or torchrun --nproc-per-node N -m vlm_eval finetune ... (GPUs or CPUs, gloo).",
    )
    p.add_argument("recipe", nargs="?", help="a recipe in recipes/ (e.g. mini-fare4) or a YAML file")
    p.add_argument("--output-dir", type=Path, help="run folder (default finetune/<recipe>-<time>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run from its last state")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def overrides_from(extra: list[str]) -> dict[str, str]:
    """`--key value` pairs (dots reach nested fields) -> {"key": "value"}."""
    pairs = {}
    it = iter(extra)
    for flag in it:
        if not flag.startswith("--") or len(flag) < 3:
            raise VlmEvalError(f"expected --key value overrides of recipe fields, got {flag!r}")
        value = next(it, None)
        if value is None:
            raise VlmEvalError(f"{flag} needs a value")
        pairs[flag[2:].replace("-", "_")] = value
    return pairs


def main(argv: list[str]) -> int:
    args, extra = parser().parse_known_args(argv)
    from vlm_eval.finetune.loop import finetune, resume_recipe  # torch and accelerate: after --help
    from vlm_eval.finetune.recipe import load_recipe

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.resume:
        if args.recipe or extra:
            raise VlmEvalError("--resume RUN_DIR continues a run with its own recipe: give nothing else")
        card = finetune(resume_recipe(args.resume), args.resume, resume=True)
    else:
        if not args.recipe:
            raise VlmEvalError("give a recipe (a name in recipes/ or a YAML file), or --resume RUN_DIR")
        recipe = load_recipe(args.recipe, overrides_from(extra))
        run_dir = args.output_dir or Path("finetune") / f"{Path(args.recipe).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        card = finetune(recipe, run_dir)
    print(f"encoder card  {card}\nevaluate it   python -m vlm_eval --encoder {card.parent} ...")
    return 0
