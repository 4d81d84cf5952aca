"""open_clip -> transformers CLIPVisionModel conversion: same hidden states at every layer.

LLaVA reads `hidden_states[-2]` of the `CLIPVisionModel`; these tests compare every layer against the
outputs of open_clip's residual blocks (forward hooks), on random weights (nothing is downloaded).
"""

from __future__ import annotations

import copy

import pytest
import torch

from vlm_eval.cards import EncoderCard
from vlm_eval.encoders.convert import (
    UnsupportedArchitectureError,
    convert_visual_state_dict,
    hf_vision_config,
    to_hf_vision_model,
)
from vlm_eval.encoders.openclip_family import build_visual, load_openclip_encoder
from vlm_eval.errors import CheckpointError

ATOL = 1e-4


def tiny_card(quick_gelu: bool = True, seed: int = 0, **vision: object) -> EncoderCard:
    vision_cfg = {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32, **vision}
    config = {"embed_dim": 32, "quick_gelu": quick_gelu, "vision_cfg": vision_cfg}
    return EncoderCard(name="tiny", family="openclip", arch="tiny", source={"random": seed}, arch_config=config)


def perturb_(visual: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Make LayerNorm weights and all biases non-trivial: at init they are 1 / 0, which would hide a
    swapped ln_1/ln_2 or a q/k/v bias mix-up."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in visual.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
            elif param.ndim == 1 and name.endswith("weight"):  # LayerNorm scales
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=gen))
    return visual


def run_both(visual: torch.nn.Module, hf_model: torch.nn.Module, images: torch.Tensor):
    """open_clip's per-block outputs (hooks) and embedding; the HF model's outputs."""
    captured: list[torch.Tensor] = []
    hooks = [visual.ln_pre.register_forward_hook(lambda m, i, o: captured.append(o))]
    hooks += [b.register_forward_hook(lambda m, i, o: captured.append(o)) for b in visual.transformer.resblocks]
    try:
        with torch.no_grad():
            embedding = visual(images)
            hf_out = hf_model(pixel_values=images, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    return captured, embedding, hf_out


def assert_equivalent(visual: torch.nn.Module, images: torch.Tensor) -> None:
    hf_model = to_hf_vision_model(visual)
    captured, embedding, hf_out = run_both(visual, hf_model, images)
    # hidden_states[0] is the pre_layrnorm output, hidden_states[i + 1] the output of block i
    assert len(hf_out.hidden_states) == len(visual.transformer.resblocks) + 1 == len(captured)
    for i, (ours, theirs) in enumerate(zip(hf_out.hidden_states, captured)):
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=ATOL, msg=lambda m, i=i: f"hidden_states[{i}]: {m}")
    torch.testing.assert_close(hf_out.hidden_states[-2], captured[-2], atol=ATOL, rtol=ATOL)  # LLaVA's layer
    # the final image embedding: post_layernorm(CLS) @ proj
    projected = hf_model.post_layernorm(hf_out.last_hidden_state[:, 0]) @ visual.proj
    torch.testing.assert_close(projected, embedding, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(hf_out.pooler_output @ visual.proj, embedding, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("quick_gelu", [True, False], ids=["quickgelu", "gelu"])
def test_tiny_tower_matches_every_layer(quick_gelu: bool) -> None:
    visual = perturb_(load_openclip_encoder(tiny_card(quick_gelu)).visual)
    assert hf_vision_config(visual).hidden_act == ("quick_gelu" if quick_gelu else "gelu")
    assert_equivalent(visual, torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)))


def test_activation_mapping_is_load_bearing() -> None:
    """Same weights, GELU vs QuickGELU: outputs differ, so a wrong hidden_act would fail the tests above."""
    visual = perturb_(load_openclip_encoder(tiny_card(quick_gelu=False)).visual)
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    right = to_hf_vision_model(visual)
    config = hf_vision_config(visual)
    config.hidden_act = "quick_gelu"
    wrong = type(right)(config).eval()
    wrong.load_state_dict(right.state_dict(), strict=True)
    with torch.no_grad():
        a = right(pixel_values=images, output_hidden_states=True).hidden_states[-2]
        b = wrong(pixel_values=images, output_hidden_states=True).hidden_states[-2]
    assert (a - b).abs().max() > 10 * ATOL  # far above the tolerance the equivalence tests use


@pytest.mark.slow
def test_vit_l14_quickgelu_full_architecture(vitl_encoder) -> None:
    """The real LLaVA-1.5 robust-encoder architecture (ViT-L/14, QuickGELU, 224 px), random weights."""
    encoder = vitl_encoder
    assert encoder.quick_gelu and encoder.image_size == 224
    visual = perturb_(copy.deepcopy(encoder.visual))  # the fixture is shared: perturb a copy
    config = hf_vision_config(visual)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (1024, 4096, 24)
    assert (config.num_attention_heads, config.patch_size, config.image_size) == (16, 14, 224)
    assert config.hidden_act == "quick_gelu" and config.layer_norm_eps == 1e-5
    assert_equivalent(visual, torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)))


def test_converted_keys_have_no_prefix_and_fit_exactly() -> None:
    visual = build_visual(tiny_card())
    converted = convert_visual_state_dict(visual.state_dict(), num_layers=2)
    expected = to_hf_vision_model(visual).state_dict()
    assert set(converted) == set(expected)
    assert not any(k.startswith("vision_model.") for k in converted)
    assert "proj" not in converted


def test_dtype_follows_the_source() -> None:
    visual = build_visual(tiny_card()).to(torch.bfloat16)
    model = to_hf_vision_model(visual)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"ls_init_value": 1e-5}, "layer scale"),
        ({"attentional_pool": True}, "attentional_pool"),
        ({"no_ln_pre": True}, "no_ln_pre"),
        ({"pool_type": "avg"}, "pool_type"),
        ({"qk_norm": True}, "CustomResidualAttentionBlock"),
    ],
)
def test_unconvertible_options_are_refused(option: dict, message: str) -> None:
    visual = build_visual(tiny_card(**option))
    with pytest.raises(UnsupportedArchitectureError, match=message):
        to_hf_vision_model(visual)


def test_non_square_input_is_refused() -> None:
    from open_clip.transformer import VisionTransformer

    visual = VisionTransformer(image_size=(224, 192), patch_size=32, width=64, layers=1, heads=2, mlp_ratio=4.0)
    with pytest.raises(UnsupportedArchitectureError, match="non-square"):
        hf_vision_config(visual)


def test_unmapped_or_missing_weights_are_refused() -> None:
    state = build_visual(tiny_card()).state_dict()
    with pytest.raises(UnsupportedArchitectureError, match="ls_1.gamma"):
        convert_visual_state_dict({**state, "transformer.resblocks.0.ls_1.gamma": torch.ones(64)}, num_layers=2)
    with pytest.raises(UnsupportedArchitectureError, match="resblocks.1"):
        convert_visual_state_dict(state, num_layers=1)  # a layer would be dropped
    del state["ln_pre.weight"]
    with pytest.raises(CheckpointError, match="ln_pre.weight"):
        convert_visual_state_dict(state, num_layers=2)
