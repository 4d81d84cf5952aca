"""Flamingo: a CLIP vision encoder, a Perceiver resampler and a transformers causal language model
whose decoder layers get gated cross-attention to the images.

The vision encoder's patch tokens are read before its final LayerNorm (`ln_post`), as OpenFlamingo
was trained with open_clip 2.19 (open_clip >= 2.23 returns them after it unless
`final_ln_after_pool` is set), CLS dropped. Nothing here runs under `no_grad`: gradients reach the pixels.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from vlm_eval.vlms.openflamingo.modules import FlamingoLayer, GatedCrossAttention, PerceiverResampler

# where each language model family keeps its decoder layers
DECODER_LAYERS = {"mpt": "transformer.blocks", "gpt_neox": "gpt_neox.layers"}


def decoder_layers(lang_encoder: nn.Module) -> nn.ModuleList:
    path = DECODER_LAYERS.get(lang_encoder.config.model_type)
    if path is None:
        raise ValueError(f"no Flamingo wiring for {lang_encoder.config.model_type!r} language models; "
                         f"known: {', '.join(DECODER_LAYERS)}")
    return lang_encoder.get_submodule(path)


def tokens_before_ln_post(visual: nn.Module) -> nn.Module:
    """Make an open_clip `VisionTransformer` return (pooled, patch tokens before ln_post); the pooled
    embedding is unchanged (the LayerNorm of the class token either way)."""
    if getattr(visual, "attn_pool", None) is not None or not hasattr(visual, "final_ln_after_pool"):
        raise ValueError("OpenFlamingo reads an open_clip ViT's patch tokens; this encoder is not one")
    visual.final_ln_after_pool = True
    visual.output_tokens = True
    return visual


class FlamingoModel(nn.Module):
    """Flamingo over a language model whose decoder layers are wrapped in `FlamingoLayer`s.

    Args:
        vision_encoder: an open_clip `VisionTransformer` (normalised pixels in).
        lang_encoder: a transformers causal LM with the `<image>` and `<|endofchunk|>` tokens in its vocabulary.
        media_token_id: the `<image>` token's id.
        vis_dim: the vision encoder's width.
        cross_attn_every_n_layers: a gated cross-attention before decoder layer i when (i + 1) % n == 0.
        perceiver: `PerceiverResampler` settings (depth, dim_head, heads, num_latents).
        cross_attention: `GatedCrossAttention` settings (dim_head, heads, ff_mult).
    """

    def __init__(self, vision_encoder: nn.Module, lang_encoder: nn.Module, media_token_id: int, vis_dim: int,
                 cross_attn_every_n_layers: int, perceiver: dict | None = None, cross_attention: dict | None = None):
        super().__init__()
        self.vision_encoder = tokens_before_ln_post(vision_encoder)
        self.perceiver = PerceiverResampler(vis_dim, **(perceiver or {}))
        self.lang_encoder = lang_encoder
        self.media_token_id = media_token_id
        layers = decoder_layers(lang_encoder)
        width = lang_encoder.config.hidden_size
        for i, layer in enumerate(layers):
            gated = (GatedCrossAttention(width, vis_dim, **(cross_attention or {}))
                     if (i + 1) % cross_attn_every_n_layers == 0 else None)
            layers[i] = FlamingoLayer(gated, layer)
        self._images_so_far: torch.Tensor | None = None

    def flamingo_layers(self) -> list[FlamingoLayer]:
        return list(decoder_layers(self.lang_encoder))

    @contextmanager
    def plain_language_model(self) -> Iterator[nn.Module]:
        """Inside: the language model with its own decoder layers, as transformers saves and builds it."""
        layers = decoder_layers(self.lang_encoder)
        wrapped = list(layers)
        for i, layer in enumerate(wrapped):
            layers[i] = layer.decoder_layer
        try:
            yield self.lang_encoder
        finally:
            for i, layer in enumerate(wrapped):
                layers[i] = layer

    def image_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, T, 3, H, W) -> the resampler's latents (B, T, n, d)."""
        _, tokens = self.vision_encoder(pixels.flatten(0, 1))
        return self.perceiver(tokens.unflatten(0, pixels.shape[:2]))

    @contextmanager
    def conditioned(self, latents: torch.Tensor) -> Iterator[None]:
        """Inside: every call of the language model reads `latents` (B, T, n, d), row b's text attending
        to its own images. A call without `<image>` tokens after one with them (a KV-cached generation
        step) attends to the last image of the prompt, as OpenFlamingo's generation does."""
        for layer in self.flamingo_layers():
            layer.media = latents
        hook = self.lang_encoder.register_forward_pre_hook(self._locate_media, with_kwargs=True)
        try:
            yield
        finally:
            hook.remove()
            self._images_so_far = None
            for layer in self.flamingo_layers():
                layer.media = layer.text_time = None

    def _locate_media(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs["input_ids"] if kwargs.get("input_ids") is not None else args[0]
        is_image = ids == self.media_token_id
        if self._images_so_far is None or is_image.any():
            text_time = is_image.cumsum(-1)
            self._images_so_far = text_time[:, -1]
        else:
            rows = ids.shape[0] // self._images_so_far.shape[0]  # generate() may expand rows (beams)
            text_time = self._images_so_far.repeat_interleave(rows)[:, None].expand_as(ids)
        for layer in self.flamingo_layers():
            layer.text_time = text_time

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, **lm_kwargs):
        """Normalised pixels (B, T, 3, H, W) and text with T `<image>` tokens per row -> the LM's output."""
        with self.conditioned(self.image_latents(pixels)):
            return self.lang_encoder(input_ids=input_ids, **lm_kwargs)

    def checkpoint_keys(self) -> list[str]:
        """The keys an OpenFlamingo checkpoint holds: the resampler, the gated cross-attentions, the input
        embedding and, where it is not tied to it, the output embedding (GPT-NeoX's `embed_out`)."""
        keys = [k for k in self.state_dict() if k.startswith("perceiver.") or ".gated_cross_attn_layer." in k]
        embeddings = [self.lang_encoder.get_input_embeddings().weight]
        output = self.lang_encoder.get_output_embeddings()
        if output is not None and output.weight is not embeddings[0]:
            embeddings.append(output.weight)
        names = {id(p): n for n, p in self.lang_encoder.named_parameters()}  # tied: the first name
        return keys + [f"lang_encoder.{names[id(w)]}" for w in embeddings]
