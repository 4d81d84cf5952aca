"""This shard's batches: take a free batch, load pixels, let the task evaluate, append the records.

Batches are cut from the whole subset, so every shard, and a resumed run with any number of shards,
meets the same batches (and the attack state saved for one of them). A shard takes the next batch
nobody holds (run.claims) and appends its records to its own file at once (run.folder), so a crash
loses no finished work; when no batch is free but some are still held, it waits, to take over any
whose shard dies.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from vlm_eval import results, stopping
from vlm_eval.contracts import VLM, Classifier, Step, TaskType
from vlm_eval.data.samples import Sample
from vlm_eval.errors import BadSampleError
from vlm_eval.run import folder
from vlm_eval.run.claims import Claims
from vlm_eval.timing import DATA, MODEL, phase

log = logging.getLogger(__name__)

WAIT_S = 5.0  # between two looks for a free batch while other shards finish theirs


def evaluate_shard(task: TaskType, model: VLM | Classifier, samples: list[Sample], step: Step, batch_size: int,
                   strict: bool, claims: Claims, tag: str) -> None:
    """Evaluate batches of `batch_size` until every sample of the run has a record (or was skipped)."""
    from tqdm import tqdm

    mine = folder.records_file(step.run_dir, tag), folder.skipped_file(step.run_dir, tag)
    for path in mine:
        folder.drop_cut_line(path)
    progress = folder.Progress(step.run_dir)
    batches = {f"batch-{n:06d}": samples[start : start + batch_size]
               for n, start in enumerate(range(0, len(samples), batch_size))}
    attack = step.attack or step.replay
    done = progress.update()
    if done:
        log.warning("resuming %s: %d of %d samples done", step.run_dir, len(done), len(samples))
    with tqdm(total=len(samples), desc="evaluating" + (f", {attack.name}" if attack else ""), unit="sample") as bar:
        while True:
            stopping.stop_if_requested()  # between batches
            done = progress.update()
            bar.update(len(done) - bar.n)
            todo = {name: [s for s in batch if s.id not in done] for name, batch in batches.items()}
            todo = {name: left for name, left in todo.items() if left}
            if not todo:
                return
            name = next((name for name in todo if claims.take(name)), None)
            if name is None:
                bar.set_postfix_str(f"{len(todo)} batches held by other shards", refresh=True)
                time.sleep(WAIT_S)
                continue
            evaluate_batch(task, model, todo[name], step, strict, *mine)
            claims.release(name)


def evaluate_batch(task: TaskType, model: VLM | Classifier, chunk: list[Sample], step: Step, strict: bool,
                   records_file: Path, skipped_file: Path) -> None:
    from vlm_eval.attacks.snapshot import clear_snapshot

    with phase(DATA):
        pixels, kept, bad = load_pixels(chunk, model.preprocess, strict)
    if kept:
        with phase(MODEL):  # less the scoring, checks and writing inside, which count for themselves
            records = task.evaluate_batch(model, kept, torch.stack(pixels), step)
        results.append_jsonl(records_file, records)
        clear_snapshot(step.run_dir, [s.id for s in kept])  # the batch is done: nothing of it to resume
    if bad:
        results.append_jsonl(skipped_file, bad)


def load_pixels(chunk: list[Sample], preprocess: Callable[[Image.Image], torch.Tensor],
                strict: bool) -> tuple[list[torch.Tensor], list[Sample], list[dict[str, str]]]:
    """(pixel tensors, the samples they belong to, skipped samples); bad images are skipped, or raise if strict."""
    from vlm_eval.data import load_image

    pixels, kept, skipped = [], [], []
    for sample in chunk:
        try:
            pixels.append(preprocess(load_image(sample.image_path, sample.id)))
            kept.append(sample)
        except BadSampleError as exc:
            if strict:
                raise
            log.warning("skipping %s (use --strict to stop instead)", exc)
            skipped.append({"id": sample.id, "reason": str(exc)})
    return pixels, kept, skipped
