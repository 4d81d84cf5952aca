"""Sentence-embedding models (sentence-transformers) for the output-side semantic checks.

A model is named by a local folder (as `SentenceTransformer.save` writes it) or a hub id, looked up
in the local Hugging Face cache; it is downloaded only with --allow-download. A plain transformers
checkpoint works too: sentence-transformers then mean-pools its token embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from vlm_eval.errors import CheckpointError, MissingResourceError

EmbedTexts = Callable[[list[str]], torch.Tensor]  # texts -> (N, D) unit-norm float32 embeddings


def sentence_model_status(name: str) -> tuple[bool, str]:
    """Whether the model is present locally, and where (or how to get it); never touches the network."""
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):  # a folder, not a hub id
        if (path / "config.json").is_file() or (path / "modules.json").is_file():
            return True, str(path)
        return False, f"{path} is not a sentence-transformers or transformers model folder (no config.json)"
    from huggingface_hub import try_to_load_from_cache

    for filename in ("modules.json", "config.json"):
        cached = try_to_load_from_cache(name, filename)
        if isinstance(cached, str):
            return True, str(Path(cached).parent)
    return False, f"{name} is not in the local Hugging Face cache; get it with: hf download {name}"


def load_sentence_model(name: str, device: str, allow_download: bool = False) -> EmbedTexts:
    """The model's text embedder, in eval mode on `device`.

    Raises:
        MissingResourceError: not present locally (and downloading not allowed).
        CheckpointError: present but unreadable.
    """
    present, where = sentence_model_status(name)
    if not present and not allow_download:
        raise MissingResourceError(f"sentence model {name!r}: {where} (or rerun with --allow-download, "
                                   "or --sentence-model none to skip the output similarity)")
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(name, device=device, local_files_only=not allow_download)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"sentence model {name!r} ({where}) cannot be loaded: {exc}") from exc
    model.eval()

    def embed(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            out = model.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
        return out.float().cpu()

    return embed
