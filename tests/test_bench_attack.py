"""The attack benchmark compares like with like: its reference-style loop computes the same loss as the
toolkit's closure, and its FLOP count is the formula in docs/performance.md."""

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_attack.py"
TINY = {
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "patch_size": 56, "image_size": 224},
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 2},
    "vocab": 500,
}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_attack", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_style_loss_is_the_toolkits_loss(bench):
    vlm = bench.build_model(TINY, "cpu", torch.float32)
    batch = bench.make_batch(vlm, 3)
    ours = vlm.loss_closure(batch, [bench.TARGET] * 3)(batch.pixels)
    theirs = torch.stack([bench.reference_style_loss(vlm)(batch.pixels[i : i + 1]) for i in range(3)])
    assert torch.allclose(ours, theirs, rtol=1e-5)
    assert len(set(ours.tolist())) == 3  # the loss depends on the image


def test_flops_count_layers_on_every_token_and_the_head_where_the_loss_looks(bench):
    vlm = bench.build_model(TINY, "cpu", torch.float32)
    inner = vlm.model.model
    n_vision = sum(p.numel() for p in inner.vision_tower.parameters()) + sum(
        p.numel() for p in inner.multi_modal_projector.parameters())
    lm = inner.language_model
    n_layers = sum(p.numel() for p in lm.layers.parameters()) + lm.norm.weight.numel()
    expected = 4 * (n_layers * 100 + 500 * 32 * 7 + n_vision * (16 + 1))  # 224 / 56 = 4 x 4 patches, + CLS
    assert bench.model_flops(vlm, lm_tokens=100, kept_logits=7) == expected


def test_the_sides_take_turns_and_report_min_and_median(bench):
    calls, values = [], {"a": iter([3.0, 1.0, 2.0]), "b": iter([5.0, 6.0, 4.0])}

    def timer(name):
        def measure():
            calls.append(name)
            return next(values[name])
        return measure

    measured = bench.interleaved({"a": timer("a"), "b": timer("b")}, repeats=3)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # never all of one side, then all of the other
    assert measured["a"] == {"min": 1.0, "median": 2.0, "all": [3.0, 1.0, 2.0]}
    assert measured["b"]["min"] == 4.0 and measured["b"]["median"] == 5.0
