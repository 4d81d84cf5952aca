"""Flamingo's trainable parts, with the parameter names of the released OpenFlamingo checkpoints.

    PerceiverResampler     image tokens (B, T, v, d) -> latents (B, T, n, d), per image
    GatedCrossAttention    text attends to the latents of its own image; tanh gates, 0 at init
    FlamingoLayer          a gated cross-attention (or none) run before a language-model decoder layer

Text sees only the image it follows: `text_time[b, i]` counts the `<image>` tokens up to token i,
and token i attends to image number `text_time` (none before the first image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """LayerNorm, Linear, GELU, Linear (no biases): indices 0, 1, 3 in the checkpoints."""
    inner = dim * mult
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., n, heads * d) -> (..., heads, n, d)"""
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-3, -2).flatten(-2)


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.heads, inner = heads, dim_head * heads
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """media (B, T, v, d), latents (B, T, n, d) -> (B, T, n, d); latents attend to media and themselves."""
        media, latents = self.norm_media(media), self.norm_latents(latents)
        q = split_heads(self.to_q(latents), self.heads)
        k, v = (split_heads(t, self.heads) for t in self.to_kv(torch.cat([media, latents], dim=-2)).chunk(2, dim=-1))
        return self.to_out(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class PerceiverResampler(nn.Module):
    """A fixed number of latents per image, whatever the number of image tokens (no time embeddings,
    as in the released models)."""

    def __init__(self, dim: int, depth: int = 6, dim_head: int = 64, heads: int = 8, num_latents: int = 64,
                 ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)]) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, media: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(*media.shape[:2], *self.latents.shape)
        for attention, ff in self.layers:
            latents = attention(media, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


class MaskedCrossAttention(nn.Module):
    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.heads, inner = heads, dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, media: torch.Tensor, text_time: torch.Tensor) -> torch.Tensor:
        """x (B, L, dim), media (B, T, n, dim_visual), text_time (B, L): the image each token reads (1-based,
        0: none yet, and those tokens get a zero output)."""
        n_images, n_latents = media.shape[1], media.shape[2]
        q = split_heads(self.to_q(self.norm(x)), self.heads)
        k, v = (split_heads(t, self.heads) for t in self.to_kv(media.flatten(1, 2)).chunk(2, dim=-1))
        image_of_key = torch.arange(1, n_images + 1, device=x.device).repeat_interleave(n_latents)
        allowed = text_time[:, None, :, None] == image_of_key  # (B, 1, L, T * n)
        # a token before any image has no key at all: attend to every key, then zero the output
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | (text_time == 0)[:, None, :, None])
        out = out.masked_fill((text_time == 0)[:, None, :, None], 0.0)
        return self.to_out(merge_heads(out))


class GatedCrossAttention(nn.Module):
    """Cross-attention and feed-forward, each added through a tanh gate that starts closed."""

    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8, ff_mult: int = 4):
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, dim_head, heads)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, media: torch.Tensor, text_time: torch.Tensor) -> torch.Tensor:
        x = self.attn(x, media, text_time) * self.attn_gate.tanh() + x
        return self.ff(x) * self.ff_gate.tanh() + x


class FlamingoLayer(nn.Module):
    """A language model's decoder layer with a gated cross-attention before it (or none).

    The image latents and each token's image are set on the layer before the language model runs
    (`condition`): a decoder layer's call signature is the language model's business, passed on as is.
    """

    def __init__(self, gated_cross_attn_layer: GatedCrossAttention | None, decoder_layer: nn.Module):
        super().__init__()
        self.gated_cross_attn_layer = gated_cross_attn_layer
        self.decoder_layer = decoder_layer
        self.media: torch.Tensor | None = None
        self.text_time: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self.gated_cross_attn_layer is not None:
            if self.media is None:
                raise RuntimeError("a Flamingo layer ran without images: call the model through FlamingoModel")
            hidden_states = self.gated_cross_attn_layer(hidden_states, self.media, self.text_time)
        return self.decoder_layer(hidden_states, *args, **kwargs)
