"""Command line: `python -m vlm_eval [options]` evaluates; `python -m vlm_eval list` shows what is known.

Examples:
    python -m vlm_eval --vlm llava --encoder simclip --task coco
    python -m vlm_eval --vlm tiny-random-llava --encoder tiny-random --task demo
    python -m vlm_eval --encoder mini-clip --task mini-zeroshot      (zero-shot classification, no VLM)
    python -m vlm_eval list
    python -m vlm_eval resume RUN_DIR                                 (finish an interrupted run)
    torchrun --nproc-per-node 8 -m vlm_eval ... --output-dir RUN_DIR  (one shard per GPU; or --shard i/n)
    python -m vlm_eval merge RUN_DIR [--partial]                      (score the shards' records as one run)
    python -m vlm_eval sweep sweeps/mini-robust.yaml                  (a grid of runs: encoders x tasks x eps ...)
    python -m vlm_eval report RUN_DIR [RUN_DIR ...]                   (HTML report of runs, side by side)
    python -m vlm_eval table RUN_DIR... --format latex                 (the papers' tables)
    python -m vlm_eval plot RUN_DIR... --output-dir plots             (score vs eps, success rates, checks)
    python -m vlm_eval finetune mini-fare4                            (adversarial fine-tuning of an encoder)
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path

from vlm_eval.config import PRECISIONS, RESOLUTIONS, EvalConfig, key_value
from vlm_eval.errors import VlmEvalError
from vlm_eval.stopping import stop_gracefully
from vlm_eval.terminal import summary_table
from vlm_eval.timing import timings_to
from vlm_eval.program import program, version

log = logging.getLogger("vlm_eval")


# Commands of their own: name -> module with a `main(argv)`, imported on use
# (matplotlib and jinja2 stay out of evaluation runs).
COMMANDS = {"report": "vlm_eval.report", "table": "vlm_eval.tables", "plot": "vlm_eval.plots",
            "finetune": "vlm_eval.finetune.command", "compare": "vlm_eval.compare",
            "rescore": "vlm_eval.rescore"}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 2 user error, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] in (["--version"], ["-V"]):
            print(f"{program()} {version()}")
            return 0
        if argv[:1] == ["list"]:
            return list_command(argv[1:])
        if argv[:1] == ["resume"]:
            return resume_command(argv[1:])
        if argv[:1] == ["merge"]:
            return merge_command(argv[1:])
        if argv[:1] == ["sweep"]:
            return sweep_command(argv[1:])
        if argv[:1] and argv[0] in COMMANDS:
            from importlib import import_module

            return import_module(COMMANDS[argv[0]]).main(argv[1:])
        return eval_command(argv)
    except VlmEvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry_point() -> int:
    """`vlm-eval` and `python -m vlm_eval`: `main`, then an exit without the interpreter's last garbage
    collections, which walk torch's and transformers' millions of objects (1.3 s of a run on 2 cores)."""
    code = main()
    gc.freeze()  # our files are closed by then; what is left is freed by the process's end
    return code


def eval_parser() -> argparse.ArgumentParser:
    defaults = EvalConfig()
    p = argparse.ArgumentParser(
        prog=program(),
        description="Evaluate a VLM with a (robust) CLIP encoder swapped in. Other commands: `list` (the VLMs, "
        "encoders and tasks), `resume RUN_DIR`, `merge RUN_DIR`, `sweep`, `finetune`, and for finished runs "
        f"`report`, `table`, `plot`, `compare`, `rescore` (`{program('report --help')}`); --version.",
    )
    p.add_argument("--vlm", default=defaults.vlm,
                   help="VLM card (default %(default)s); ignored by zero-shot classification tasks")
    p.add_argument("--encoder", default=defaults.encoder,
                   help="encoder card or alias (openai/clip, tecoa2, tecoa4/tecoa, fare2, fare4/fare, simclip2, "
                        "simclip4/simclip), a checkpoint path, or hf-hub:org/name (default %(default)s)")
    p.add_argument("--task", default=defaults.task, help="task card (default %(default)s)")
    p.add_argument("--n-samples", type=_n_samples, default=defaults.n_samples,
                   help="size of the seeded subset, or 'all' (default: the protocol's 500, or 25 images for a "
                        "--target preset, as RobustVLM)")
    p.add_argument("--seed", type=int, default=defaults.seed,
                   help="subset seed (default: 42, or the --target preset's own seed, as RobustVLM)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default %(default)s")
    p.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                   help="weights' dtype; auto = fp16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default=defaults.device, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--device-map", help="split a VLM too big for one GPU over the GPUs this process sees: auto, "
                   "balanced, ... (transformers' device_map); with shards, one process per node "
                   "(docs/scale.md)")
    p.add_argument("--resolution", type=int, choices=RESOLUTIONS, default=defaults.resolution,
                   help="224: robust-encoder protocol (the encoder replaces the tower, 256 image tokens); "
                        "336: LLaVA's native tower (default %(default)s)")
    p.add_argument("--data-root", help="folder with the task's files (default ./data)")
    p.add_argument("--data", action="append", default=[], metavar="KEY=PATH",
                   help="override one file of the task card, e.g. --data image_dir=/data/coco/val2014")
    p.add_argument("--output-dir", help="run folder (default results/<task>-<vlm>-<encoder>-<time>, "
                                        "zero-shot: results/<task>-<encoder>-<time>)")
    p.add_argument("--config", metavar="FILE", help="a YAML file of these options' values (keys as in "
                   "config.json: encoder, eps, n_samples, ...); options given here override it")
    p.add_argument("--shard", metavar="i/n", help=SHARD_HELP)
    p.add_argument("--weights-dir", help="extra folder searched for encoder checkpoints")
    p.add_argument("--encoder-arch", default=defaults.encoder_arch,
                   help="open_clip architecture of an encoder given as a path (default %(default)s)")
    p.add_argument("--allow-download", action="store_true", help="let missing weights be downloaded from the hub")
    p.add_argument("--strict", action="store_true", help="stop at a bad sample instead of skipping it")
    p.add_argument("--vqa-normalize", choices=("official", "always"), default=defaults.vqa_normalize,
                   help="official VQA answer normalisation, or 'always' (as OpenFlamingo / RobustVLM)")
    p.add_argument("--postprocess", choices=("auto", "llava", "openflamingo"), default=defaults.postprocess,
                   help="clean-up of answers and captions before scoring: LLaVA's own evaluation, or OpenFlamingo's "
                        "(as RobustVLM applies it to LLaVA too); default: the VLM's own")
    p.add_argument("--shots", type=int, default=defaults.shots,
                   help="in-context demonstrations for VLMs that take them (OpenFlamingo): 0 (default) is its "
                        "'0-shot' with two text-only demonstrations from the task's training split")
    _add_run_arguments(p, defaults)
    _add_attack_arguments(p, defaults)
    _add_defense_arguments(p, defaults)
    _add_semantic_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _add_run_arguments(p: argparse.ArgumentParser, defaults: EvalConfig) -> None:
    p.add_argument("--threads", type=int, default=defaults.threads, metavar="N",
                   help="torch's CPU threads (default: the cores this process may run on; on a shared machine "
                        "or for tiny models, 1 is often faster)")
    p.add_argument("--bootstrap", type=int, default=defaults.bootstrap, metavar="N",
                   help="resamples of the 95 %% bootstrap interval given with every score (default %(default)s; "
                        "0: none)")
    p.add_argument("--timings", type=Path, metavar="FILE",
                   help="write where the run's time went, by phase (imports, data, model, scoring, writing, ...), "
                        "to FILE as JSON (scripts/bench_pipeline.py)")


def _add_attack_arguments(p: argparse.ArgumentParser, defaults: EvalConfig) -> None:
    attack = p.add_argument_group("attack", "an attack on the image; scores of the attacked outputs alone, and "
                                  "robust scores: the per-sample worst of clean and attacked")
    attack.add_argument("--attack", default=defaults.attack,
                        help="none, pgd, apgd (untargeted), targeted (APGD towards --target) or ensemble "
                        "(the papers' schedule, see --schedule) (default %(default)s)")
    attack.add_argument("--target", help="targeted attacks: the string the VLM should say, or a preset: url, "
                        "password, stupid, stocks, vaccines, email")
    attack.add_argument("--check-every", type=int, default=defaults.check_every, metavar="N",
                        help="targeted: every N steps the VLM answers each sample's best image so far, and "
                        "samples that say the target stop there (0: every sample runs all --steps) "
                        "(default %(default)s)")
    attack.add_argument("--eps", default=defaults.eps, help="radius in [0, 1] pixels, e.g. 4/255 (default %(default)s)")
    attack.add_argument("--norm", type=str.lower, choices=("linf", "l2"), default=defaults.norm,
                        help="Linf or L2, in any case (default %(default)s)")
    attack.add_argument("--allow-zero-eps", action="store_true",
                        help="let --eps 0 through, for a deliberate no-op check (robust scores must equal the clean)")
    attack.add_argument("--steps", type=int, default=defaults.steps, help="iterations per sample (default %(default)s)")
    attack.add_argument("--schedule", metavar="FILE", help="--attack ensemble: the schedule (default: the task "
                        "type's in schedules/, the papers' protocol)")
    attack.add_argument("--from-adversarial", metavar="RUN_DIR",
                        help="evaluate the adversarial images a run with --attack saved (transfer, or re-scoring)")
    attack.add_argument("--quantize-8bit", action="store_true",
                        help="with --from-adversarial: round the images to 8 bits first, as saving a PNG would")
    attack.add_argument("--masked-lm", metavar="MODEL", help="--attack text / bimodal on zero-shot tasks: "
                        "BERT-Attack with this masked LM (a folder or a cached hub id, e.g. bert-base-uncased) "
                        "instead of the gradient-guided HotFlip")


def _add_defense_arguments(p: argparse.ArgumentParser, defaults: EvalConfig) -> None:
    defense = p.add_argument_group("defence", "a test-time defence where images enter the model (docs/defenses.md)")
    defense.add_argument("--defense", default=defaults.defense,
                         help="none, ttc (test-time counterattack) or random-noise (its baseline) (default %(default)s)")
    defense.add_argument("--defense-arg", action="append", default=[], metavar="KEY=VALUE",
                         help="a defence setting, repeatable: eps, steps, step_size, tau_threshold, beta, "
                         "tau_encoder (the encoder whose embedding measures tau; default: the card's original)")
    defense.add_argument("--adaptive", action="store_true",
                         help="attack through the defence (default: the paper's non-adaptive setting, the attack "
                         "computed on the undefended model and the defence applied after)")
    defense.add_argument("--eot-samples", type=int, default=defaults.eot_samples, metavar="N",
                         help="--adaptive: draws of the defence's randomness averaged per attack step "
                         "(default %(default)s)")


def _add_semantic_arguments(p: argparse.ArgumentParser) -> None:
    semantic = p.add_argument_group("semantic checks", "how attacked samples' images and outputs are compared "
                                    "with the clean ones (docs/semantic.md)")
    semantic.add_argument("--reference-encoder", metavar="ENCODER",
                          help="a CLIP (encoder card with a text tower) that measures every run on one ruler: image "
                          "cosines and CLIP scores; 'none' skips them (default: the VLM card's, openai for LLaVA)")
    semantic.add_argument("--sentence-model", metavar="MODEL",
                          help="sentence-transformers hub id or folder for the clean vs adversarial output "
                          "similarity; 'reference': the reference CLIP's text tower; 'none' skips it "
                          "(default: the VLM card's, sentence-transformers/all-MiniLM-L6-v2 for LLaVA)")


SHARD_HELP = ("this process is shard i of n (0 <= i < n) of the run in --output-dir; shards take batches as "
              "they free up, the last one merges (default: RANK/WORLD_SIZE of torchrun or accelerate launch, "
              "each on cuda:LOCAL_RANK; else the whole run)")


def eval_command(argv: list[str]) -> int:
    args = eval_parser().parse_args(argv)
    if not args.timings:
        return evaluate(argv, args)
    with timings_to(args.timings):
        return evaluate(argv, args)


def evaluate(argv: list[str], args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    config = config_from(argv, args)

    from vlm_eval import cards
    from vlm_eval.run import run
    from vlm_eval.run.shard import shard_from
    from vlm_eval.run.suite import run_suite, suite_table

    shard = shard_from(args.shard)
    task_card = cards.load_card("tasks", config.task)
    if task_card.type == "suite" and shard.count > 1:
        raise VlmEvalError("--task zeroshot-suite runs its members one after another: shard each member's run")
    with stop_gracefully():
        print(suite_table(run_suite(config, task_card)) if task_card.type == "suite"
              else summary_table(run(config, shard=shard)))
    return 0


def config_from(argv: list[str], args: argparse.Namespace) -> EvalConfig:
    """The EvalConfig of the options, over those of --config FILE: an option given on the command line
    wins; --data and --defense-arg add to the file's mappings."""
    from dataclasses import fields

    from vlm_eval.config import load_config_file

    values = {**vars(args), "data": dict(key_value(kv) for kv in args.data),
              "defense_args": dict(key_value(kv, "--defense-arg") for kv in args.defense_arg)}
    if args.config:
        from_file, given = load_config_file(Path(args.config)), explicit_options(argv)
        for key in ("data", "defense_args"):
            values[key] = {**from_file.pop(key, {}), **values[key]}
        values |= {key: value for key, value in from_file.items() if key not in given}
    return EvalConfig(**{f.name: values[f.name] for f in fields(EvalConfig)})


def explicit_options(argv: list[str]) -> set[str]:
    """The destinations of the options `argv` gives (not those left at their defaults)."""
    parser = eval_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def resume_command(argv: list[str]) -> int:
    """Finish an interrupted run in its folder, with the settings it started with."""
    p = argparse.ArgumentParser(prog=program("resume"),
                                description="Finish an interrupted run: the samples it wrote are kept, the rest "
                                "evaluated; an attack it was in the middle of continues from its last saved state.")
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    p.add_argument("--shard", metavar="i/n", help=SHARD_HELP + "; n may differ from the interrupted run's")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    _setup_logging(args.verbose)
    from vlm_eval.run import resume
    from vlm_eval.run.shard import shard_from

    with stop_gracefully():
        print(summary_table(resume(args.run_dir, shard_from(args.shard))))
    return 0


def merge_command(argv: list[str]) -> int:
    """Score the records of a run's shards as one set (the last shard to finish does it by itself)."""
    p = argparse.ArgumentParser(prog=program("merge"),
                                description="Merge a run's shards: their records in subset order, each sample "
                                "once, scored as one set, into samples.jsonl and summary.json. Idempotent.")
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    p.add_argument("--partial", action="store_true",
                   help="merge even if some samples have no record yet (summary.json then says partial)")
    args = p.parse_args(argv)
    _setup_logging(False)
    from vlm_eval.run import merge

    print(summary_table(merge(args.run_dir, partial=args.partial)))
    return 0


def sweep_command(argv: list[str]) -> int:
    """Run a grid of evaluations (vlm_eval.run.sweep), then print their tables."""
    from vlm_eval.run import sweep
    from vlm_eval.run.shard import shard_from
    from vlm_eval.tables import build_tables, collect, render_markdown

    p = argparse.ArgumentParser(prog=program("sweep"), description=sweep.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", metavar="SWEEP.yaml", type=Path)
    p.add_argument("--shard", metavar="i/n", help=SHARD_HELP)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    _setup_logging(args.verbose)
    with stop_gracefully():
        done, failed = sweep.run_sweep(sweep.load_sweep(args.sweep), shard_from(args.shard))
    print(render_markdown(build_tables(collect(done))), end="")
    for failure in failed:
        print(f"FAILED {failure}")
    return 2 if failed else 0


def list_command(argv: list[str]) -> int:
    """Print the VLMs, encoders and tasks with whether their weights / data are present locally."""
    p = argparse.ArgumentParser(prog=program("list"))
    p.add_argument("--data-root", help="folder with the tasks' files (default ./data)")
    p.add_argument("--weights-dir", help="extra folder searched for encoder checkpoints")
    args = p.parse_args(argv)
    from vlm_eval.listing import listing

    print(listing(args.data_root and Path(args.data_root), args.weights_dir and Path(args.weights_dir)))
    return 0


def _n_samples(text: str) -> int | str | None:
    if text == "all":
        return None
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, 'all' or 'auto', got {text!r}") from None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
