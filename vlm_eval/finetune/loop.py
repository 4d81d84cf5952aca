"""The one fine-tuning loop, over accelerate: a CPU, one GPU, or `accelerate launch` over many (DDP).

Each optimiser step takes `batch_size` samples of a seeded order (the same whatever the number of
processes: each process takes every world-size-th one, in `grad_accum` micro-batches), so a run on
one process and on several update the same weights, and a resumed run meets the batches it would
have. The inner attack of each sample is seeded by its position in that order.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vlm_eval import results
from vlm_eval.cards import EncoderCard
from vlm_eval.errors import CardError, VlmEvalError
from vlm_eval.finetune import OBJECTIVES
from vlm_eval.finetune.checkpoint import ENCODER_CARD, export_encoder, last_state, save_state
from vlm_eval.finetune.data import TrainData, read_train_data
from vlm_eval.finetune.evaluate import evaluate_held_out
from vlm_eval.finetune.recipe import Recipe, recipe_from_dict
from vlm_eval.finetune.step import Context, Objective, TrainBatch
from vlm_eval.finetune.towers import Towers

if TYPE_CHECKING:
    from accelerate import Accelerator


log = logging.getLogger(__name__)


@dataclass
class Run:
    recipe: Recipe
    run_dir: Path
    card: EncoderCard
    data: TrainData
    held_out: list[int]  # item indices kept out of training, for evaluation
    train: list[int]
    orders: dict[int, list[int]] = field(default_factory=dict)  # the current epoch's order


def finetune(recipe: Recipe, run_dir: Path, resume: bool = False) -> Path:
    """Train, export the encoder and its card into `run_dir`; returns the card's path."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision="bf16" if recipe.precision == "bf16" else "no",
                              gradient_accumulation_steps=recipe.grad_accum,
                              cpu=not torch.cuda.is_available())  # CPU processes then join over gloo
    run = prepare_run(recipe, run_dir, resume, accelerator.num_processes)
    objective: Objective = OBJECTIVES.get(recipe.method)()
    if objective.needs_labels and run.data.labels is None:
        raise CardError(f"recipe {recipe.source}: {recipe.method} trains on classes; give class-folder data "
                        "(data: {kind: imagefolder, image_dir: ..., class_index_json: ...})")
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx, optimizer, scheduler, provenance = build(run, objective, accelerator)
    start = 0
    if resume:
        start, state = last_state(run_dir) or (0, None)
        if state is not None:
            accelerator.load_state(str(state))
            log.warning("resuming %s at step %d of %d", run_dir, start, recipe.steps)
    elif accelerator.is_main_process:
        results.write_json(run_dir / "recipe.json", {"recipe": recipe.describe(), "base": provenance,
                                                     "processes": accelerator.num_processes})
    stop = StopOnSignal()
    train_steps(run, ctx, objective, optimizer, scheduler, accelerator, start, stop)
    card = run_dir / ENCODER_CARD
    if accelerator.is_main_process:
        from vlm_eval.encoders.text import tokenizer_file

        card = export_encoder(ctx.towers.clip, run.card, run_dir, recipe.name or run_dir.name, recipe.describe(),
                              tokenizer_file(run.card) if run.card.tokenizer else None)
    accelerator.wait_for_everyone()
    return card


def prepare_run(recipe: Recipe, run_dir: Path, resume: bool, processes: int) -> Run:
    """Check the recipe against the data and the folder before anything heavy."""
    if recipe.method not in OBJECTIVES:
        raise CardError(f"recipe {recipe.source}: unknown method {recipe.method!r}; known: {', '.join(OBJECTIVES.names())}")
    if recipe.batch_size % (recipe.grad_accum * processes):
        raise VlmEvalError(f"batch_size {recipe.batch_size} must split evenly over grad_accum {recipe.grad_accum} x "
                           f"{processes} processes")
    if not resume and (run_dir / "recipe.json").exists():
        raise VlmEvalError(f"{run_dir} holds a fine-tuning run already; choose another --output-dir, or finish it "
                           f"with: python -m vlm_eval finetune --resume {run_dir}")
    card = base_card(recipe.encoder)
    data = read_train_data(recipe.data)
    held = recipe.eval_size if len(data) >= 4 * recipe.eval_size else 0
    return Run(recipe, run_dir, card, data, list(range(len(data) - held, len(data))), list(range(len(data) - held)))


def base_card(spec: str) -> EncoderCard:
    from vlm_eval.run.plan import encoder_card

    return encoder_card(spec)


def build(run: Run, objective: Objective,
          accelerator: Accelerator) -> tuple[Context, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, dict]:
    """(context, optimiser, schedule, base provenance): the models prepared by accelerate."""
    from vlm_eval.encoders import ENCODER_FAMILIES

    clip, tokenize, provenance = ENCODER_FAMILIES.get(run.card.family).load_clip(run.card, None, False)
    original = Towers(copy.deepcopy(clip)).eval().requires_grad_(False) if objective.needs_original else None
    towers = Towers(clip).train()
    towers.requires_grad_(False)
    clip.visual.requires_grad_(True)
    if objective.trains_text:
        towers.requires_grad_(True)
    optimizer = adamw(towers, run.recipe.lr, run.recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, run.recipe))
    model, optimizer = accelerator.prepare(towers, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped here once per optimiser step, whatever the processes
    if original is not None:
        original.to(accelerator.device)
    ctx = Context(run.recipe, model, accelerator.unwrap_model(model), original, tokenize, run.data.class_names,
                  accelerator.autocast)
    return ctx, optimizer, scheduler, provenance


def adamw(towers: Towers, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, decaying matrices only (not norms, biases, embeddings of scale such as logit_scale)."""
    params = [p for p in towers.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def lr_factor(step: int, recipe: Recipe) -> float:
    """Linear warm-up over `warmup` steps, then constant or cosine down to 0 at the last step."""
    if step < recipe.warmup:
        return (step + 1) / recipe.warmup
    if recipe.schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)))


def micro_batches(run: Run, step: int, rank: int, world: int) -> list[tuple[list[int], list[int]]]:
    """This process's micro-batches of a step: (item indices, their global positions in the seeded order) each."""
    positions = list(range(step * run.recipe.batch_size, (step + 1) * run.recipe.batch_size))[rank::world]
    per_micro = len(positions) // run.recipe.grad_accum
    chunks = [positions[k * per_micro : (k + 1) * per_micro] for k in range(run.recipe.grad_accum)]
    return [([item_at(run, p) for p in chunk], chunk) for chunk in chunks]


def item_at(run: Run, position: int) -> int:
    """The item at a position of the training stream: epoch after epoch, each in its own seeded order."""
    epoch, offset = divmod(position, len(run.train))
    if epoch not in run.orders:
        generator = torch.Generator().manual_seed(run.recipe.seed * 100_003 + epoch)
        run.orders = {epoch: torch.randperm(len(run.train), generator=generator).tolist()}
    return run.train[run.orders[epoch][offset]]


def train_steps(run: Run, ctx: Context, objective: Objective, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LambdaLR, accelerator: Accelerator, start: int,
                stop: StopOnSignal) -> None:
    from tqdm import tqdm

    recipe, size = run.recipe, run.card.image_size
    bar = tqdm(total=recipe.steps, initial=start, desc=f"finetune {recipe.method}", unit="step",
               disable=not accelerator.is_main_process)
    for step in range(start, recipe.steps):
        logs = {}
        for indices, positions in micro_batches(run, step, accelerator.process_index, accelerator.num_processes):
            pixels, captions, labels = run.data.load(indices, size, [p // len(run.train) for p in positions])
            batch = TrainBatch(pixels.to(accelerator.device), captions,
                               None if labels is None else labels.to(accelerator.device),
                               [recipe.seed * 10_000_019 + p for p in positions])
            with accelerator.accumulate(ctx.model):
                loss, logs = objective.loss(ctx, batch)
                if not torch.isfinite(loss):
                    raise VlmEvalError(f"step {step}: the {recipe.method} loss is {loss.item()}; lower --lr, or use "
                                       f"--precision fp32 (the last good state is in {run.run_dir})")
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
        scheduler.step()
        bar.update(1)
        bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4g}", refresh=False)
        write_log(run, accelerator, {"step": step + 1, "lr": scheduler.get_last_lr()[0], **logs})
        evaluate_now = (recipe.eval_every and (step + 1) % recipe.eval_every == 0) or step + 1 == recipe.steps
        if evaluate_now and run.held_out and accelerator.is_main_process:
            write_log(run, accelerator, {"step": step + 1, "eval": evaluate_held_out(ctx, run.data, run.held_out, size)})
        if (recipe.save_every and (step + 1) % recipe.save_every == 0) or stop.asked:
            save_state(accelerator, run.run_dir, step + 1)
        if stop.asked:
            raise VlmEvalError(f"stopped by a signal after step {step + 1}; finish with: "
                               f"python -m vlm_eval finetune --resume {run.run_dir}")
    bar.close()


def write_log(run: Run, accelerator: Accelerator, entry: dict) -> None:
    if accelerator.is_main_process:
        results.append_jsonl(run.run_dir / "log.jsonl", [entry])


class StopOnSignal:
    """SIGTERM (a scheduler's pre-emption) asks the loop to save its state after the current step and stop."""

    def __init__(self) -> None:
        self.asked = False
        try:
            signal.signal(signal.SIGTERM, self._ask)
        except ValueError:  # not the main thread: no handler
            pass

    def _ask(self, *_: object) -> None:
        self.asked = True


def resume_recipe(run_dir: Path) -> Recipe:
    path = run_dir / "recipe.json"
    if not path.is_file():
        raise VlmEvalError(f"{run_dir} is not a fine-tuning run folder (no recipe.json)")
    raw = dict(json.loads(path.read_text())["recipe"])
    source = raw.pop("source")
    return recipe_from_dict(raw, source)
