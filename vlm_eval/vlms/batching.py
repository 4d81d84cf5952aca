"""What every VLM family's adapter does to batch token sequences, and to watch a generation's logits."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from vlm_eval.errors import NonFiniteOutputError


def left_pad(sequences: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) on `device`, padded on the left so every sequence ends at T."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


@contextmanager
def finite_outputs(module: torch.nn.Module, ids: list[str], dtype: torch.dtype) -> Iterator[None]:
    """Fail after the block if `module` (the output head) produced a NaN or Inf: a generation from such
    logits is garbage that still scores. The flags stay on the device until the end (no sync per token)."""
    flags: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _, __, out: flags.append(torch.isfinite(out).all()))
    try:
        yield
    finally:
        handle.remove()
    if flags and not bool(torch.stack(flags).all()):
        raise NonFiniteOutputError("the VLM's logits", ids, str(dtype))
