"""A fixed CLIP as the semantic checks' ruler: unit-norm image and text embeddings (`ReferenceEncoder`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from vlm_eval.cards import EncoderCard
from vlm_eval.data.images import clip_normalize
from vlm_eval.encoders.openclip_family import LoadedClip, load_openclip_clip
from vlm_eval.encoders.text import load_text_tokenizer


class ReferenceClip:
    """A fixed CLIP: unit-norm image and text embeddings, for image cosines and image-text scores."""

    def __init__(self, model: torch.nn.Module, tokenize: Callable[[list[str]], torch.Tensor], image_size: int):
        self.model, self.tokenize, self.image_size = model.eval().requires_grad_(False), tokenize, image_size
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, card: EncoderCard, weights_dir: Path | None, allow_download: bool,
             device: str) -> tuple[ReferenceClip, LoadedClip]:
        """(the card's CLIP in fp32 on `device`, its `LoadedClip` for provenance)."""
        tokenize = load_text_tokenizer(card)
        loaded = load_openclip_clip(card, weights_dir, allow_download)
        return cls(loaded.model.to(device=device, dtype=torch.float32), tokenize, loaded.image_size), loaded

    @torch.no_grad()
    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels of any square size, resized (bicubic, antialiased) to the CLIP's own."""
        x = pixels.to(self.device, torch.float32)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True).clamp(0, 1)
        return F.normalize(self.model.encode_image(clip_normalize(x)).float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.model.encode_text(self.tokenize(list(texts)).to(self.device)).float(), dim=-1).cpu()
