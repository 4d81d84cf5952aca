"""OpenFlamingo as the toolkit's `VLM`: prompts, batched beam-search generation and per-sample losses
over [0, 1] pixels, with any CLIP ViT as the vision encoder."""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import PreTrainedTokenizerBase

from vlm_eval.contracts import Batch, ImageEncoder, LossFn
from vlm_eval.data.images import clip_normalize, preprocess_clip_image
from vlm_eval.errors import CheckpointError
from vlm_eval.vlms.batching import finite_outputs, left_pad
from vlm_eval.vlms.openflamingo.model import FlamingoModel, tokens_before_ln_post
from vlm_eval.vlms.openflamingo.prompts import END_OF_CHUNK, GENERATION, IMAGE, Demonstration, chunk_answer, flamingo_prompt


class FlamingoAdapter:
    """Batched generation and teacher-forced losses for one Flamingo model.

    Args:
        model: a `FlamingoModel` on its device and in its dtype.
        tokenizer: its tokenizer, which knows `<image>`, `<|endofchunk|>` and a pad token.
        image_size: the vision encoder's input size.
    """

    def __init__(self, model: FlamingoModel, tokenizer: PreTrainedTokenizerBase, image_size: int):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE)
        self.end_of_chunk_id = tokenizer.convert_tokens_to_ids(END_OF_CHUNK)
        self.colon_id = self._ids(":")[0]
        self.pad_id = tokenizer.pad_token_id
        self.takes_positions = "position_ids" in inspect.signature(model.lang_encoder.forward).parameters

    @property
    def device(self) -> torch.device:
        return next(self.model.lang_encoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.lang_encoder.parameters()).dtype

    def swap_encoder(self, encoder: ImageEncoder) -> None:
        visual = encoder.visual
        if visual.conv1.out_channels != self.model.perceiver.latents.shape[1]:
            raise CheckpointError(f"the encoder's width {visual.conv1.out_channels} does not fit this Flamingo's resampler "
                             f"(expects {self.model.perceiver.latents.shape[1]}); pick a ViT of its vision architecture")
        self.model.vision_encoder = tokens_before_ln_post(visual).to(device=self.device, dtype=self.dtype).eval()
        self.model.vision_encoder.requires_grad_(False)

    def prompt(self, kind: str, question: str | None = None, demonstrations: Sequence[Demonstration] = (),
               with_images: bool = False) -> str:
        return flamingo_prompt(kind, question, demonstrations, with_images)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """open_clip's evaluation geometry: short side resized (bicubic) and centre-cropped to the encoder's size."""
        return preprocess_clip_image(image, self.image_size)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (..., 3, H, W) -> CLIP-normalised, on the model's device and in its dtype."""
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {tuple(pixels.shape[-2:])}")
        return clip_normalize(pixels.to(self.device)).to(self.dtype)

    @torch.no_grad()
    def context_latents(self, context: torch.Tensor | None) -> torch.Tensor | None:
        """The demonstrations' images (B, k, 3, H, W) -> their latents (B, k, n, d), once per batch: constants."""
        return None if context is None else self.model.image_latents(self.normalize(context))

    def latents(self, pixels: torch.Tensor, context_latents: torch.Tensor | None) -> torch.Tensor:
        """The latents of each sample's images in prompt order: its demonstrations', then its query image's
        (each image is resampled on its own, so the demonstrations' can be computed once)."""
        query = self.model.image_latents(self.normalize(pixels).unsqueeze(1))
        return query if context_latents is None else torch.cat([context_latents, query], dim=1)

    @torch.no_grad()
    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed(pixels).cpu()

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, D): the vision encoder's pooled CLIP embedding, differentiable in the pixels."""
        pooled, _ = self.model.vision_encoder(self.normalize(pixels))
        return pooled.float()

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _lm_inputs(self, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        inputs = {"input_ids": ids, "attention_mask": mask}
        if self.takes_positions:  # rotary models (GPT-NeoX); MPT's ALiBi is unaffected by left padding
            inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        return inputs

    @torch.no_grad()
    def generate(self, batch: Batch, max_new_tokens: int) -> list[str]:
        """Beam search as OpenFlamingo's evaluation runs it (3 beams; length penalty -2 for captions),
        stopping at `<|endofchunk|>`; left-padded batches, each row its own image."""
        settings = GENERATION[batch.kind or "caption"]
        ids, mask = left_pad([self._ids(p) for p in batch.prompts], self.pad_id, self.device)
        latents = self.latents(batch.pixels, self.context_latents(batch.context))
        head = self.model.lang_encoder.get_output_embeddings()
        with self.model.conditioned(latents.repeat_interleave(settings.num_beams, dim=0)), \
                finite_outputs(head, batch.ids, self.dtype):
            out = self.model.lang_encoder.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, num_beams=settings.num_beams,
                length_penalty=settings.length_penalty, do_sample=False, eos_token_id=self.end_of_chunk_id,
                pad_token_id=self.pad_id, use_cache=True)
        return [t.strip() for t in self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)]

    def labelled_ids(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        """(ids of prompt + target + `<|endofchunk|>`, labels): as RobustVLM's attack, -100 up to and
        including the last colon and on `<image>`, `<|endofchunk|>` and the first token."""
        ids = self._ids(chunk_answer(prompt, target))
        last_colon = max((i for i, t in enumerate(ids) if t == self.colon_id), default=0)
        labels = [-100 if i <= last_colon or t in (self.image_id, self.end_of_chunk_id) else t
                  for i, t in enumerate(ids)]
        return ids, labels

    def loss_closure(self, batch: Batch, targets: list[str]) -> LossFn:
        """`loss_fn(pixels, rows=None) -> (n,)`: the summed cross-entropy of each target's tokens.

        Each sample's loss depends only on its own pixels, prompt and target (left padding, ALiBi or
        explicit positions), so its gradient does not change with the batch it is in. Demonstrations'
        images (`batch.context`) enter as constants: only the query image is attacked.
        """
        if len(targets) != len(batch.prompts):
            raise ValueError(f"{len(targets)} targets for {len(batch.prompts)} prompts")
        pairs = [self.labelled_ids(p, t) for p, t in zip(batch.prompts, targets)]
        ids, mask = left_pad([ids for ids, _ in pairs], self.pad_id, self.device)
        labels, context = torch.full_like(ids, -100), self.context_latents(batch.context)
        for row, (_, wanted) in enumerate(pairs):
            labels[row, ids.shape[1] - len(wanted) :] = torch.tensor(wanted, device=self.device)

        def loss_fn(pixels: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            pick = slice(None) if rows is None else rows.to(self.device)
            with self.model.conditioned(self.latents(pixels, None if context is None else context[pick])):
                logits = self.model.lang_encoder(**self._lm_inputs(ids[pick], mask[pick])).logits
            ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[pick, 1:], ignore_index=-100,
                                 reduction="none")
            return ce.sum(-1)

        return loss_fn

    def describe(self) -> dict:
        return {"image_size": self.image_size, "geometry": "center-crop",
                "latents_per_image": self.model.perceiver.latents.shape[0]}
