"""MosaicGPT (MPT-1B-RedPajama, OpenFlamingo-3B's language model) on transformers' own MPT.

The hub repo ships remote code (`mosaic_gpt`), which the toolkit never runs. Its weights map onto
`MptForCausalLM` by renaming (`ln_1/ln_2/ln_f` -> `norm_1/norm_2/norm_f`, `mlp.mlp_up/mlp_down` ->
`ffn.up_proj/down_proj`), except for its QK LayerNorm (`attn.q_ln`, `attn.k_ln`: over the whole
width, on q and k before the heads split), which native MPT attention lacks: each block's attention
is replaced by `QkLayerNormAttention`, so no weight is dropped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn
from transformers import MptConfig, MptForCausalLM
from transformers.models.mpt.modeling_mpt import MptAttention

from vlm_eval.errors import CheckpointError

RENAMES = [(r"\.ln_1\.", ".norm_1."), (r"\.ln_2\.", ".norm_2."), (r"^transformer\.ln_f\.", "transformer.norm_f."),
           (r"\.mlp\.mlp_up\.", ".ffn.up_proj."), (r"\.mlp\.mlp_down\.", ".ffn.down_proj.")]


class QkLayerNormAttention(MptAttention):
    """MPT attention with MosaicGPT's LayerNorms on the full-width queries and keys (no biases)."""

    def __init__(self, config: MptConfig, layer_idx: int | None = None):
        super().__init__(config, layer_idx)
        self.q_ln = nn.LayerNorm(self.hidden_size, bias=False)
        self.k_ln = nn.LayerNorm(self.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor, position_bias: torch.Tensor, cache=None,
                attention_mask: torch.Tensor | None = None, **kwargs):
        batch, length = hidden_states.shape[:2]
        query, key, value = self.Wqkv(hidden_states).chunk(3, dim=2)
        query, key = self.q_ln(query).to(value.dtype), self.k_ln(key).to(value.dtype)
        query, key, value = (t.reshape(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
                             for t in (query, key, value))
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        scores = torch.matmul(query, key.transpose(-1, -2)) * self.softmax_scale
        if position_bias is not None:  # ALiBi over the last key positions, as native MPT slices it
            scores = scores + position_bias[:, -length:, -key.shape[-2]:]
        if attention_mask is not None:
            scores = scores.masked_fill(attention_mask, torch.finfo(query.dtype).min)
        weights = torch.softmax(scores.float(), dim=-1).to(value.dtype)
        context = torch.matmul(weights, value).transpose(1, 2).reshape(batch, length, -1)
        return self.out_proj(context), weights


def is_mosaic_gpt(config: dict) -> bool:
    return config.get("model_type") == "mosaic_gpt"


def mpt_config(config: dict) -> MptConfig:
    """The native MPT configuration of a MosaicGPT config.json."""
    if config.get("attn_clip_qkv") or not config.get("no_bias", False) or config.get("logit_scale") is not None:
        raise CheckpointError("this MosaicGPT uses settings native MPT lacks (clip_qkv, biases or a logit scale)")
    return MptConfig(d_model=config["d_model"], n_heads=config["n_heads"], n_layers=config["n_layers"],
                     expansion_ratio=config.get("mlp_ratio", 4), max_seq_len=config["max_seq_len"],
                     vocab_size=config["vocab_size"], no_bias=True,
                     attn_config={"alibi": config.get("alibi", True), "alibi_bias_max": config.get("alibi_bias_max", 8),
                                  "softmax_scale": config.get("softmax_scale")})


def load_mosaic_gpt(folder: Path, dtype: torch.dtype) -> MptForCausalLM:
    """MosaicGPT weights from `folder` (config.json and its weights file) as an `MptForCausalLM`; every
    weight must find its place (the tied output embedding aside)."""
    config = json.loads((folder / "config.json").read_text())
    model = MptForCausalLM(mpt_config(config))
    if config.get("attn_qk_ln"):
        for i, block in enumerate(model.transformer.blocks):
            block.attn = QkLayerNormAttention(model.config, i)
    result = model.load_state_dict(renamed(read_weights(folder)), strict=False)
    missing = [k for k in result.missing_keys if k != "lm_head.weight"]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{folder}: these MosaicGPT weights do not fit MPT: missing {missing[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")
    return model.to(dtype).eval()


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(folder / "model.safetensors")
    return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)


def renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        for pattern, replacement in RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = tensor
    return out
