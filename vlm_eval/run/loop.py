"""This run's batches: skip finished samples, load pixels, let the task evaluate, append the records.

Batches are cut from the whole subset and then drop the finished samples, so a resumed run meets the
batches of the interrupted one (and the attack state saved for one of them). Each batch's records
are appended to samples.jsonl at once, so a crash loses no finished work.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from vlm_eval import results
from vlm_eval.contracts import VLM, Classifier, Record, Step, TaskType
from vlm_eval.data.samples import Sample
from vlm_eval.errors import BadSampleError

log = logging.getLogger(__name__)

RECORDS = "samples.jsonl"


def evaluate_all(task: TaskType, model: VLM | Classifier, samples: list[Sample], step: Step, batch_size: int,
                 strict: bool, finished: Collection[str] = ()) -> tuple[list[Record], list[dict[str, str]]]:
    """(new records, skipped samples) of every sample not `finished`, in batches of `batch_size`."""
    from tqdm import tqdm

    records, skipped = [], []
    attack = step.attack or step.replay
    desc = "evaluating" if attack is None else f"evaluating, {attack.name}"
    with tqdm(total=len(samples), desc=desc, unit="sample") as bar:
        for start in range(0, len(samples), batch_size):
            chunk = [s for s in samples[start : start + batch_size] if s.id not in finished]
            bar.update(min(batch_size, len(samples) - start) - len(chunk))
            if not chunk:
                continue
            pixels, kept, bad = load_pixels(chunk, model.preprocess, strict)
            skipped += bad
            if kept:
                new = task.evaluate_batch(model, kept, torch.stack(pixels), step)
                results.append_jsonl(step.run_dir / RECORDS, new)
                records += new
            bar.update(len(chunk))
    return records, skipped


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


def finished_records(run_dir: Path, samples: list[Sample]) -> list[Record]:
    """The records an interrupted run wrote; a last line cut off by the interruption is dropped."""
    from vlm_eval.errors import VlmEvalError

    if (run_dir / "subset_ids.txt").read_text().split() != [str(s.id) for s in samples]:
        raise VlmEvalError(f"{run_dir}: the task's samples are not those the run started with (subset_ids.txt): "
                           "its data changed; start a new run")
    path = run_dir / RECORDS
    records, cut = results.read_jsonl(path)
    if cut:
        log.warning("dropping the last line of %s: the interruption cut it off", path)
        results.replace_jsonl(path, records)  # so that new lines do not follow the cut one
    log.warning("resuming %s: %d of %d samples done", run_dir, len(records), len(samples))
    return records
