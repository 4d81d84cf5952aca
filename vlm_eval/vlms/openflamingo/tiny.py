"""Random-weight Flamingos of the real architecture, tiny: for tests and offline demos.

The language model is a transformers MPT (as in OpenFlamingo-9B) or GPT-NeoX (as in -4B) over a byte
tokenizer that, like GPT-NeoX's, has no pad token: the loader adds `<|endofchunk|>`, `<image>` and
`<PAD>` exactly as for the released models. Outputs are meaningless.
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, MptConfig, MptForCausalLM, PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
LANGUAGE_MODELS = {"mpt": (MptConfig, MptForCausalLM), "gpt_neox": (GPTNeoXConfig, GPTNeoXForCausalLM)}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level, no merges, `<|endoftext|>` (id 0) as BOS, EOS and unknown; no BOS is prepended."""
    vocab = {END_OF_TEXT: 0}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([END_OF_TEXT])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                                   unk_token=END_OF_TEXT)


def random_language_model(kind: str, config: dict[str, Any], vocab_size: int, seed: int) -> torch.nn.Module:
    """A seeded random causal LM of `kind` ("mpt" or "gpt_neox") with `config`'s fields."""
    if kind not in LANGUAGE_MODELS:
        raise ValueError(f"unknown tiny language model {kind!r}; known: {', '.join(LANGUAGE_MODELS)}")
    config_class, model_class = LANGUAGE_MODELS[kind]
    torch.manual_seed(seed)
    return model_class(config_class(vocab_size=vocab_size, **config)).eval()


def open_gates(model: torch.nn.Module, value: float, seed: int) -> None:
    """Random resampler and cross-attention weights (seeded) with the tanh gates set to `value`: a fresh
    Flamingo's gates are 0, so it would ignore its images."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("perceiver.") or ".gated_cross_attn_layer." in name:
                if name.endswith("_gate"):
                    param.fill_(value)
                elif param.dim() > 1:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
