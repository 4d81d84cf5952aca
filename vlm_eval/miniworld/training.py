"""Pieces the mini world's training recipes share: the training split, the mini CLIP, image loading,
normalisation, schedules, optimiser."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vlm_eval.data import Sample, load_image
from vlm_eval.data.images import CLIP_MEAN, CLIP_STD


def recipe_parser(doc: str, steps: int, batch_size: int, warmup: int, weight_decay: float) -> argparse.ArgumentParser:
    """The options both recipes share, with each recipe's defaults; a recipe adds its own."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, help="a mini world written by `python -m vlm_eval.miniworld DIR` "
                   "(default: the cache the tasks use, completed with the training images if needed)")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--weight-decay", type=float, default=weight_decay)
    p.add_argument("--train-size", type=int, help="use only the first N training images (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu (how the committed weights were made) or cuda, for quick experiments")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bfloat16 autocast, as the committed weights were trained: 1.4-1.8x faster on CPUs with "
                   "avx512_bf16 or AMX; --no-bf16 on CPUs without them, where emulated bfloat16 is slow")
    return p


def autocast(args: argparse.Namespace):
    """The forward pass's precision context: bfloat16 autocast if --bf16, else a no-op."""
    return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16)


def start(args: argparse.Namespace) -> Path:
    """Threads and seed as the options say; the root of the world with its training images."""
    from vlm_eval.miniworld.export import ensure_train_data, existing_world
    from vlm_eval.tasks.data import generated_root

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return existing_world(args.world, "train") if args.world else ensure_train_data(generated_root("miniworld"))


def load_images(paths: list[Path]) -> torch.Tensor:
    """(N, 3, 224, 224) uint8: the training images, decoded once and kept in memory (1.5 GB for 10k)."""
    out = torch.empty((len(paths), 3, 224, 224), dtype=torch.uint8)
    for i, path in enumerate(tqdm(paths, desc="loading images", unit="img")):
        out[i] = torch.from_numpy(np.array(load_image(path, str(path)), dtype=np.uint8)).permute(2, 0, 1)
    return out


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> CLIP-normalised float pixels."""
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    return images.float().mul_(1 / (255 * std)).sub_(mean / std)  # in place: a tenth of a CLIP step otherwise


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to `floor` x peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (not on norms, biases, embeddings of scale such as logit_scale)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def train_split(root: Path, limit: int | None) -> tuple[list[Sample], list[tuple[int, Sample]]]:
    """The training images' caption samples (the first `limit`, through the real readers) and their VQA
    questions, each with the row of its image."""
    from vlm_eval.data import read_karpathy_captions, read_vqa

    samples = read_karpathy_captions(root / "dataset_miniworld.json", root / "images", split="train")[:limit]
    row_of = {s.id: row for row, s in enumerate(samples)}
    questions = read_vqa(root / "vqa/miniworld_train_questions.json", root / "vqa/miniworld_train_annotations.json",
                         root / "images/train", "{image_id}.png")
    return samples, [(row_of[q.image_id], q) for q in questions if q.image_id in row_of]


def majority(answers: tuple[str, ...]) -> str:
    """The most frequent human answer (VQA's multiple_choice_answer), the target the VLMs are trained on."""
    return max(sorted(set(answers)), key=answers.count)


def mini_clip_card(clip_path: Path | None):
    """The mini-clip encoder card, or its weights replaced by `clip_path` (a freshly trained CLIP)."""
    from vlm_eval import cards

    card = cards.load_card("encoders", "mini-clip")
    if clip_path is None:
        return card
    return dataclasses.replace(card, source={"path": str(clip_path.resolve()), "format": "open_clip_full"})
