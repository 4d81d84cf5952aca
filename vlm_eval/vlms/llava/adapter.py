"""LLaVA-1.5 adapter over transformers' `LlavaForConditionalGeneration`.

Two modes:
  * robust protocol (FARE / Sim-CLIP papers): the vision tower is replaced by a converted open_clip
    encoder at 224 px; layer -2, CLS dropped, so 256 image tokens enter the unchanged projector;
  * native: the checkpoint's own tower (CLIP ViT-L/14 at 336 px, 576 image tokens).

Pixels enter in [0, 1] (the attack's space); the CLIP mean/std normalisation happens here.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LlavaForConditionalGeneration, PreTrainedTokenizerBase

from PIL import Image

from vlm_eval.contracts import Batch, ImageEncoder, LossFn
from vlm_eval.data.images import clip_normalize, preprocess_image
from vlm_eval.vlms.batching import finite_outputs, left_pad
from vlm_eval.vlms.llava.prompts import IMAGE_PLACEHOLDER, llava_prompt

log = logging.getLogger(__name__)


class LlavaAdapter:
    """Batched generation and per-sample teacher-forced losses for one LLaVA model.

    Args:
        model: a `LlavaForConditionalGeneration`, already on its device and in its dtype.
        tokenizer: its tokenizer; must know the `<image>` token.
        mode: "robust" (swapped 224-px encoder) or "native"; recorded in results.
    """

    def __init__(self, model: LlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase, mode: str):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.mode = mode
        tower = model.model.vision_tower.config
        self.image_size = tower.image_size
        self.n_image_tokens = (tower.image_size // tower.patch_size) ** 2
        self.image_token_id = model.config.image_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def swap_encoder(self, encoder: ImageEncoder) -> None:
        """Another encoder in place of the swapped-in one; the language model stays loaded (a sweep's cells)."""
        from vlm_eval.vlms.llava.load import swap_vision_tower

        swap_vision_tower(self.model, encoder.hf_vision_model())
        self.model.model.vision_tower.requires_grad_(False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def prompt(self, kind: str, question: str | None = None, demonstrations: Sequence[tuple] = (),
               with_images: bool = False) -> str:
        if demonstrations:
            raise ValueError("LLaVA-1.5 prompts take no in-context demonstrations")
        return llava_prompt(kind, question)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """LLaVA-1.5's geometry: padded to a square with the CLIP mean, resized and cropped to the tower's size."""
        return preprocess_image(image, self.image_size)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels (B, 3, H, W) -> CLIP-normalised pixel values in the model's dtype."""
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {tuple(pixels.shape[-2:])}")
        return clip_normalize(pixels.to(self.device)).to(self.dtype)

    @torch.no_grad()
    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, D) float32 on the CPU: the vision tower's pooled embedding of each image (its class token
        after the final layer norm), the evaluated encoder's own view of the image."""
        return self.embed(pixels).cpu()

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """`image_embeddings`, differentiable in the pixels and on the model's device."""
        return self.model.model.vision_tower(self.normalize(pixels)).pooler_output.float()

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a prompt as LLaVA builds them, its single `<image>` expanded to one id per image token."""
        ids = image_prompt_ids(self.tokenizer, prompt, self.image_token_id)
        if ids.count(self.image_token_id) != 1:
            raise ValueError(f"a LLaVA prompt needs exactly one {IMAGE_PLACEHOLDER}: {prompt!r}")
        at = ids.index(self.image_token_id)
        return ids[:at] + [self.image_token_id] * self.n_image_tokens + ids[at + 1 :]

    def target_ids(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        """(prompt ids, target ids + EOS) as LLaVA tokenises the conversation "prompt target".

        The whole conversation goes through `prompt_ids`, then is cut at the longest common prefix
        with the prompt alone: the answer is tokenised as it is when LLaVA itself generates it, and
        the ids are those of LLaVA's training and of the reference attack's label mask.
        """
        prompt_ids = self.prompt_ids(prompt)
        full_ids = self.prompt_ids(f"{prompt} {target}")
        common = 0
        while common < min(len(prompt_ids), len(full_ids)) and prompt_ids[common] == full_ids[common]:
            common += 1
        return full_ids[:common], full_ids[common:] + [self.eos_id]

    def generate(self, batch: Batch, max_new_tokens: int) -> list[str]:
        """Greedy captions / answers, batched with left padding and a KV cache."""
        ids, mask = left_pad([self.prompt_ids(p) for p in batch.prompts], self.pad_id, self.device)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
        )
        with finite_outputs(self.model.get_output_embeddings(), batch.ids, self.dtype):
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                pixel_values=self.normalize(batch.pixels),
                generation_config=config,
            )
        return [text.strip() for text in self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)]

    def loss_closure(self, batch: Batch, targets: list[str]) -> LossFn:
        """`loss_fn(pixels, rows=None) -> (n,)`: mean cross-entropy of each target's tokens (EOS included).

        Prompt, image tokens and padding are masked out. Each sample's loss depends only on its own
        pixels, prompt and target (left padding with explicit position ids), so its gradient does
        not change with the batch it is in.
        """
        if len(targets) != len(batch.prompts):
            raise ValueError(f"{len(targets)} targets for {len(batch.prompts)} prompts")
        pairs = [self.target_ids(p, t) for p, t in zip(batch.prompts, targets)]
        ids, mask = left_pad([p + t for p, t in pairs], self.pad_id, self.device)
        width = ids.shape[1]
        labels = torch.full_like(ids, -100)
        for row, (_, target) in enumerate(pairs):
            labels[row, width - len(target) :] = torch.tensor(target, device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = max(len(t) for _, t in pairs) + 1  # logits at position p predict token p + 1

        def loss_fn(pixels: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            pick = slice(None) if rows is None else rows.to(self.device)  # the samples still under attack
            logits = self.model(
                input_ids=ids[pick],
                attention_mask=mask[pick],
                position_ids=positions[pick],
                pixel_values=self.normalize(pixels),
                logits_to_keep=keep,
            ).logits
            predicted = logits[:, :-1].float()  # (B, keep - 1, V)
            wanted = labels[pick, width - keep + 1 :]  # (n, keep - 1)
            ce = F.cross_entropy(predicted.transpose(1, 2), wanted, ignore_index=-100, reduction="none")
            return ce.sum(-1) / (wanted != -100).sum(-1)

        return loss_fn

    def describe(self) -> dict:
        return {"mode": self.mode, "image_size": self.image_size, "image_tokens": self.n_image_tokens,
                "geometry": "pad-square"}


def image_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, image_token_id: int) -> list[int]:
    """Ids of `prompt` as LLaVA's `tokenizer_image_token` builds them, one `image_token_id` per `<image>`.

    Each chunk around `<image>` is tokenised on its own, so each starts as a fresh sequence: the newline
    after the image keeps its SentencePiece prefix "▁" (id 29871 for Llama), which transformers 5's
    `LlamaTokenizer` (prepend scheme "first" unless `legacy`) drops when the prompt is tokenised whole.
    As in the reference: if the first chunk starts with BOS, that BOS is kept and the first id (their
    BOS) of every later chunk is dropped.
    """
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE_PLACEHOLDER)]
    skip = 1 if chunks[0][:1] == [tokenizer.bos_token_id] else 0
    ids = list(chunks[0])
    for chunk in chunks[1:]:
        ids += [image_token_id] + list(chunk[skip:])
    return ids
