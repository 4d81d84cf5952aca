"""An attack's loop state as flat tensors, so a long attack can be checkpointed and resumed exactly.

Each attack keeps everything its loop needs in a dataclass of tensors and ints (nested dataclasses
allowed). After every step it hands an `AttackHook` a way to read that state; the hook shows
progress and may save it. An attack given a hook whose `resume()` returns a saved state continues
from the step after it, and ends where the uninterrupted attack would have.
"""

from __future__ import annotations

import typing
from dataclasses import fields, is_dataclass
from typing import Any, Callable, Protocol

import torch


class AttackHook(Protocol):
    def resume(self) -> dict[str, torch.Tensor] | None:
        """A state saved by an earlier, interrupted attack on the same batch, or None to start afresh."""

    def after_step(self, step: int, active: int, state: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Called after every step with the number of samples still running; `state()` flattens the loop state."""


def to_tensors(state: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """{'field' or 'nested.field': tensor}; ints become 0-d int64 tensors."""
    flat = {}
    for f in fields(state):
        value = getattr(state, f.name)
        if is_dataclass(value):
            flat |= to_tensors(value, f"{prefix}{f.name}.")
        else:
            flat[prefix + f.name] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return flat


def from_tensors(cls: type, flat: dict[str, torch.Tensor], device: torch.device, prefix: str = "") -> Any:
    """The `cls` instance `to_tensors` flattened, with its tensors on `device`."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        kind = hints[f.name]
        if is_dataclass(kind):
            values[f.name] = from_tensors(kind, flat, device, f"{prefix}{f.name}.")
        else:
            value = flat[prefix + f.name]
            values[f.name] = int(value) if kind is int else value.to(device)
    return cls(**values)
