"""Convert an open_clip ViT vision tower into a transformers `CLIPVisionModel`.

LLaVA-1.5 (`LlavaForConditionalGeneration`) takes its image features from a `CLIPVisionModel`
(`hidden_states[-2]`), so a robust open_clip encoder is swapped in by converting its weights. The two
implementations compute the same function only for the plain OpenAI-style ViT; every open_clip option
that changes the computation (layer scale, attentional pooling, custom blocks, ...) is refused here
instead of being converted wrongly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from vlm_eval.errors import CheckpointError

log = logging.getLogger(__name__)


class UnsupportedArchitectureError(CheckpointError):
    """An open_clip vision tower with an option that `CLIPVisionModel` cannot express."""


def hf_vision_config(visual: nn.Module) -> CLIPVisionConfig:
    """The `CLIPVisionConfig` with the same shapes and activation as an open_clip ViT tower.

    Raises:
        UnsupportedArchitectureError: the tower uses an option `CLIPVisionModel` lacks.
    """
    _check_supported(visual)
    block = visual.transformer.resblocks[0]
    image_size, patch_size = visual.image_size[0], visual.patch_size[0]
    return CLIPVisionConfig(
        hidden_size=visual.conv1.out_channels,
        intermediate_size=block.mlp.c_fc.out_features,
        num_hidden_layers=len(visual.transformer.resblocks),
        num_attention_heads=block.attn.num_heads,  # = width / head_width in open_clip's config
        image_size=image_size,
        patch_size=patch_size,
        num_channels=visual.conv1.in_channels,
        projection_dim=visual.proj.shape[1] if visual.proj is not None else visual.output_dim,
        # open_clip builds exact nn.GELU unless quick_gelu=True, while HF defaults to quick_gelu:
        # take the activation from the module, never from a default.
        hidden_act=_hidden_act(block.mlp.gelu),
        # open_clip's LayerNorms use torch's default eps 1e-5; read it rather than assume it.
        layer_norm_eps=visual.ln_post.eps,
    )


def convert_visual_state_dict(
    visual_state_dict: Mapping[str, torch.Tensor], num_layers: int
) -> dict[str, torch.Tensor]:
    """Rename (and split) open_clip `VisionTransformer` weights into `CLIPVisionModel` keys.

    Keys carry no `vision_model.` prefix: transformers 5's `CLIPVisionModel` has the children
    `embeddings, pre_layrnorm, encoder, post_layernorm` directly. `proj` is dropped (no slot in
    `CLIPVisionModel`; LLaVA does not use it).

    Raises:
        UnsupportedArchitectureError: a source key that has no counterpart (e.g. layer scale
            `ls_1.gamma`), so that nothing is dropped silently.
        CheckpointError: a key the mapping needs is absent.
    """
    source = dict(visual_state_dict)
    out: dict[str, torch.Tensor] = {}
    for src, dst in _renames(num_layers):
        out[dst] = _pop(source, src)
    for i in range(num_layers):
        src, dst = f"transformer.resblocks.{i}.attn.", f"encoder.layers.{i}.self_attn."
        # nn.MultiheadAttention packs q, k, v along dim 0 in this order. Cloned so that the result
        # shares no storage (safetensors refuses to save views of one tensor).
        for kind in ("weight", "bias"):
            packed = _pop(source, f"{src}in_proj_{kind}")
            for name, part in zip("qkv", packed.chunk(3, dim=0)):
                out[f"{dst}{name}_proj.{kind}"] = part.clone()
    source.pop("proj", None)
    if source:
        raise UnsupportedArchitectureError(
            f"open_clip weights without a CLIPVisionModel counterpart: {sorted(source)[:10]}; "
            "converting them would change the model (layer scale, attentional pooling, extra layers?)"
        )
    return out


def to_hf_vision_model(visual: nn.Module) -> CLIPVisionModel:
    """A `CLIPVisionModel` computing the same hidden states as `visual`, on its device and dtype.

    Returned in eval mode with gradients off for its parameters (the encoder is frozen; attacks
    differentiate with respect to the pixels only).

    Raises:
        UnsupportedArchitectureError: the tower cannot be expressed as a `CLIPVisionModel`.
    """
    config = hf_vision_config(visual)
    reference = next(visual.parameters())
    with _skip_init():  # every parameter is overwritten below; random init of 300M params costs ~5 s
        model = CLIPVisionModel(config)
    model.to(device=reference.device, dtype=reference.dtype)
    state_dict = convert_visual_state_dict(visual.state_dict(), config.num_hidden_layers)
    # strict=True: with strict=False a wrong prefix leaves every key missing and loads nothing, silently.
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    log.debug("converted open_clip tower to CLIPVisionModel (%s)", config.hidden_act)
    return model.eval().requires_grad_(False)


def _renames(num_layers: int) -> Iterator[tuple[str, str]]:
    yield "conv1.weight", "embeddings.patch_embedding.weight"
    yield "class_embedding", "embeddings.class_embedding"
    yield "positional_embedding", "embeddings.position_embedding.weight"
    for kind in ("weight", "bias"):
        yield f"ln_pre.{kind}", f"pre_layrnorm.{kind}"  # sic: transformers' spelling
        yield f"ln_post.{kind}", f"post_layernorm.{kind}"
    for i in range(num_layers):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            yield f"{src}ln_1.{kind}", f"{dst}layer_norm1.{kind}"
            yield f"{src}ln_2.{kind}", f"{dst}layer_norm2.{kind}"
            yield f"{src}attn.out_proj.{kind}", f"{dst}self_attn.out_proj.{kind}"
            yield f"{src}mlp.c_fc.{kind}", f"{dst}mlp.fc1.{kind}"
            yield f"{src}mlp.c_proj.{kind}", f"{dst}mlp.fc2.{kind}"


def _pop(source: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in source:
        raise CheckpointError(f"open_clip weights lack {key!r}, needed for the CLIPVisionModel conversion")
    return source.pop(key)


def _hidden_act(act: nn.Module) -> str:
    """The transformers `hidden_act` name computing the same function as an open_clip activation."""
    if type(act).__name__ == "QuickGELU":  # x * sigmoid(1.702 x); open_clip's own class
        return "quick_gelu"
    if type(act) is nn.GELU:
        # "gelu" in transformers is exact erf GELU; the tanh approximation has its own name.
        return {"none": "gelu", "tanh": "gelu_pytorch_tanh"}[act.approximate]
    raise UnsupportedArchitectureError(f"activation {act!r} has no transformers CLIP counterpart")


def _check_supported(visual: nn.Module) -> None:
    """Refuse every open_clip option under which the conversion would not be exact."""
    problems = list(_tower_problems(visual))
    if problems:
        raise UnsupportedArchitectureError(
            "this open_clip vision tower cannot be converted to a transformers CLIPVisionModel: "
            + "; ".join(problems)
        )


def _tower_problems(visual: nn.Module) -> Iterator[str]:
    if type(visual).__name__ != "VisionTransformer" or not hasattr(visual, "transformer"):
        yield f"it is a {type(visual).__name__}, not an open_clip VisionTransformer (timm / ResNet towers differ)"
        return
    if visual.image_size[0] != visual.image_size[1] or visual.patch_size[0] != visual.patch_size[1]:
        yield f"non-square image {visual.image_size} or patch {visual.patch_size}"
    if isinstance(visual.ln_pre, nn.Identity):
        yield "no_ln_pre=True (CLIPVisionModel always applies pre_layrnorm)"
    if getattr(visual, "attn_pool", None) is not None:
        yield "attentional_pool (CLIPVisionModel pools the CLS token)"
    if getattr(visual, "pool_type", "tok") != "tok":
        yield f"pool_type={visual.pool_type!r} (CLIPVisionModel pools the CLS token)"
    norms = [m for m in visual.modules() if isinstance(m, nn.LayerNorm)]
    if any(m.eps != visual.ln_post.eps or not m.elementwise_affine for m in norms):
        yield "LayerNorms with differing eps or without affine parameters"
    acts = {_act_name(block) for block in visual.transformer.resblocks}
    if len(acts) > 1:
        yield f"mixed activations {sorted(acts)}"
    for i, block in enumerate(visual.transformer.resblocks):
        found = list(_block_problems(block))
        if found:  # all blocks share one config: report the first faulty one only
            yield from (f"block {i}: {problem}" for problem in found)
            return


def _block_problems(block: nn.Module) -> Iterator[str]:
    if type(block).__name__ != "ResidualAttentionBlock":
        yield f"{type(block).__name__} (qk_norm / scaled cosine attention / scale_* options)"
        return
    if not isinstance(block.ls_1, nn.Identity) or not isinstance(block.ls_2, nn.Identity):
        yield "layer scale (ls_init_value set): CLIPVisionModel has no ls_1/ls_2"
    if hasattr(block, "ln_1_kv"):
        yield "cross-attention block"
    attn = block.attn
    if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim or attn.in_proj_bias is None:
        yield "attention without a packed, biased in_proj"
    elif attn.bias_k is not None or attn.out_proj.bias is None:
        yield "attention with bias_k/bias_v or without an out_proj bias"
    if block.mlp.c_fc.bias is None or block.mlp.c_proj.bias is None:
        yield "MLP without biases"
    try:
        _hidden_act(block.mlp.gelu)
    except UnsupportedArchitectureError as exc:
        yield str(exc)


def _act_name(block: nn.Module) -> str:
    act = getattr(getattr(block, "mlp", None), "gelu", None)
    return f"{type(act).__name__}:{getattr(act, 'approximate', '')}"


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """transformers' `no_init_weights` where available (its module moved between versions)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            no_init_weights = contextlib.nullcontext
    with no_init_weights():
        yield
