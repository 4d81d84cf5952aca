"""Where an OpenFlamingo card's files are, whether they are here, and how to get them (no torch).

A released model's card names the checkpoint's hub repo (`hf_id`) and, in `settings`, the file
(`checkpoint`, default checkpoint.pt) and the language model's hub repo (`language_model`); a shipped
model's card names a folder (`path`) holding `checkpoint.safetensors` and `language_model/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from vlm_eval.cards import VlmCard, card_relative


class Location(NamedTuple):
    repo: str | None  # a hub repo, or None for a local file or folder
    name: str  # the file in the repo, or the local path

    def __str__(self) -> str:
        return f"{self.repo}/{self.name}" if self.repo else self.name


def checkpoint_location(card: VlmCard) -> Location:
    settings = card.settings or {}
    if card.path is not None:
        return Location(None, str(card_relative(card, card.path) / settings.get("checkpoint", "checkpoint.safetensors")))
    return Location(card.hf_id, settings.get("checkpoint", "checkpoint.pt"))


def language_model_location(card: VlmCard) -> Location:
    settings = card.settings or {}
    if card.path is not None:
        return Location(None, str(card_relative(card, card.path) / settings.get("language_model", "language_model")))
    return Location(settings["language_model"], "")


def weights_status(card: VlmCard) -> tuple[bool, str]:
    """(all present, where they are or what is missing with the commands that fetch it)."""
    if card.build is not None:
        return True, "random weights, built on the fly"
    checkpoint, lm = checkpoint_location(card), language_model_location(card)
    missing = [f"Flamingo checkpoint {checkpoint}"] if not _present(checkpoint.repo, checkpoint.name) else []
    if not _present(lm.repo, "config.json" if lm.repo else lm.name):
        missing.append(f"language model {lm.repo or lm.name}")
    if missing:
        return False, f"missing the {' and the '.join(missing)}. {how_to_get(card)}"
    return True, str(card_relative(card, card.path)) if card.path else f"HF cache ({checkpoint} on {lm.repo})"


def _present(repo: str | None, name: str) -> bool:
    if repo is None:
        return Path(name).exists()
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, name), str)


def how_to_get(card: VlmCard) -> str:
    """The commands that fetch a card's checkpoint and language model."""
    if card.hf_id is None:
        return f"The card {card.card_path} names a folder that should hold them."
    checkpoint, lm = checkpoint_location(card), language_model_location(card)
    return (f"Get them with `hf download {checkpoint.repo} {checkpoint.name}` (the Flamingo parts) and "
            f"`hf download {lm.repo}` (the language model).")
