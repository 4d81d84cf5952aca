"""Random-weight LLaVA models of the real architecture, small enough for tests and offline demos.

Their outputs are meaningless; they exist so that every code path (conversion, swapping the
vision tower, loss closures, batched generation) runs without downloading anything.
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<image>")


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: any text, no training, no download.

    Ids 0-3 are `<pad> <s> </s> <image>`; the 256 byte symbols follow. A BOS is prepended.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def random_llava(vision: dict[str, Any], text: dict[str, Any], seed: int = 0) -> LlavaForConditionalGeneration:
    """A seeded random LLaVA-1.5 (CLIP tower, 2-layer GELU projector, Llama LM) for the byte tokenizer.

    Args:
        vision: `CLIPVisionConfig` fields of the native vision tower.
        text: `LlamaConfig` fields of the language model (the vocabulary is set here).
        seed: seed of the random initialisation.
    """
    tokenizer_size = len(SPECIAL_TOKENS) + 256
    vision_config = CLIPVisionConfig(layer_norm_eps=1e-5, **vision)
    text_config = LlamaConfig(
        vocab_size=tokenizer_size, pad_token_id=0, bos_token_id=1, eos_token_id=2, **text
    )
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=SPECIAL_TOKENS.index("<image>"),
        image_seq_length=patches,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    return model.eval()
