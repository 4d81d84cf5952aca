"""TTC (test-time counterattack): its gate and weights against a case computed by hand, its gradient, the
settings' parsing, and attacks through it on the mini world, adaptive and not."""

import json
import math
from pathlib import Path

import pytest
import torch

from vlm_eval.cli import main
from vlm_eval.defenses import choose_defense
from vlm_eval.attacks.threat import ThreatModel, random_start
from vlm_eval.defenses.ttc import TestTimeCounterattack, TtcSettings, pixel_seeds
from vlm_eval.errors import VlmEvalError

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "miniworld" / "sample"
W = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.5, -1.0, 1.0, 1.0]])  # a linear "encoder" of 1x2x2 images


def linear(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.flatten(1) @ W.T


def by_hand(x: torch.Tensor, s: TtcSettings) -> torch.Tensor:
    """TTC written out for the linear encoder: the gradient of |W d|^2 in d is 2 W^T W d."""
    d0 = random_start(x, ThreatModel("linf", s.eps, ""), pixel_seeds(x, 0)) - x  # U[-eps, eps], kept in [0, 1]
    tau = (linear(x + d0) - linear(x)).norm(dim=-1) / linear(x).norm(dim=-1)
    deltas = [d0]
    for _ in range(s.steps):
        d = deltas[-1]
        grad = (2 * (d.flatten(1) @ W.T) @ W).view_as(d)
        deltas.append(((x + (d + s.step_size * grad.sign()).clamp(-s.eps, s.eps)).clamp(0, 1) - x))
    e = [math.exp(s.beta * k) for k in range(s.steps + 1)]
    weighted = sum(w / sum(e) * d for w, d in zip(e, deltas))
    return torch.stack([x[i] + (weighted[i] if tau[i] < s.tau_threshold else d0[i]) for i in range(len(x))])


def test_ttc_counterattacks_the_falsely_stable_images_only_with_the_papers_weights():
    # image 0 is bright (its embedding moves little: tau < 0.2), image 1 nearly black (tau > 0.2)
    x = torch.stack([torch.full((1, 2, 2), 0.8), torch.full((1, 2, 2), 0.01)])
    x[0, 0, 0, 1] = 0.5
    settings = TtcSettings()
    ttc = TestTimeCounterattack(linear, settings)
    deltas, counter = ttc.deltas(x, 0)
    assert counter.tolist() == [True, False]
    assert torch.allclose(ttc(x), by_hand(x, settings), atol=1e-6)
    assert not torch.allclose(ttc(x)[0], (x + deltas[0])[0])  # the counterattack moved image 0
    assert torch.allclose(ttc(x)[1], (x + deltas[0])[1])  # image 1 got the random start only
    assert ttc(x).sub(x).abs().max() <= settings.eps + 1e-6
    # tau from another encoder: one that sees a large change gates the counterattack off
    loud = TestTimeCounterattack(linear, settings, tau_embed=lambda p: linear(p) - linear(x) + 1e-3)
    assert loud.deltas(x, 0)[1].tolist() == [False, False]


def test_the_defence_is_deterministic_per_image_and_its_gradient_is_the_identity_inside_the_box():
    x = torch.rand(3, 1, 2, 2) * 0.5 + 0.25
    ttc = TestTimeCounterattack(linear, TtcSettings())
    assert torch.equal(ttc(x)[1:], ttc(x[1:]))  # an image's answer does not depend on its batch
    assert not torch.equal(ttc(x, draw=1), ttc(x))  # another draw, other noise
    v = torch.randn_like(x)
    pixels = x.clone().requires_grad_(True)
    (ttc(pixels) * v).sum().backward()
    assert torch.equal(pixels.grad, v)
    noise = TestTimeCounterattack(linear, TtcSettings(steps=0))
    assert noise(x).sub(x).abs().max() <= 4 / 255 + 1e-6 and torch.allclose(noise(x), ttc.deltas(x, 0)[0][0] + x)


def test_defense_settings_parse_and_bad_ones_are_named():
    choice = choose_defense("ttc", {"eps": "2/255", "steps": "3", "tau_threshold": "0.1"}, True, 4)
    assert (choice.settings.eps, choice.settings.steps, choice.settings.tau_threshold) == (2 / 255, 3, 0.1)
    assert choice.adaptive and choice.eot_samples == 4 and choose_defense("none", {}, False, 1) is None
    assert choose_defense("random-noise", {}, False, 1).settings.steps == 0
    for args, message in [({"colour": "red"}, "--defense-arg colour: unknown"), ({"steps": "two"}, "not a number")]:
        with pytest.raises(VlmEvalError, match=message):
            choose_defense("ttc", args, False, 1)
    with pytest.raises(VlmEvalError, match="need a --defense"):
        choose_defense("none", {}, True, 1)
    with pytest.raises(VlmEvalError, match="for an --adaptive attack"):
        choose_defense("ttc", {}, False, 4)
    with pytest.raises(VlmEvalError, match="unknown defense 'ttx'"):
        choose_defense("ttx", {}, False, 1)


def _robust(tmp_path, *extra):
    out = tmp_path / "-".join(extra or ("plain",)).replace("-", "")
    assert main(["--encoder", "mini-clip", "--task", "mini-zeroshot", "--n-samples", "12", "--data-root", str(SAMPLE),
                 "--device", "cpu", "--attack", "apgd-ce", "--eps", "1/255", "--steps", "10", "--defense", "ttc",
                 *extra, "--output-dir", str(out)]) == 0
    return json.loads((out / "summary.json").read_text())


def test_an_adaptive_attack_through_ttc_is_at_least_as_strong_as_the_non_adaptive_one(tmp_path):
    plain, adaptive = _robust(tmp_path), _robust(tmp_path, "--adaptive", "--eot-samples", "2")
    # measured: clean 41.7 with TTC; robust 33.3 non-adaptive, 16.7 adaptive (EOT over 2 draws)
    assert plain["metrics"]["accuracy"] == adaptive["metrics"]["accuracy"]
    assert adaptive["metrics"]["accuracy_robust"] < plain["metrics"]["accuracy_robust"]
    assert plain["provenance"]["defense"]["adaptive"] is False
    assert adaptive["provenance"]["defense"] | {"eot_samples": 2, "adaptive": True} == adaptive["provenance"]["defense"]


class RecordingVLM:
    """Says nothing useful; notes the pixels it is given and its loss is their mean."""

    image_size = 2

    def __init__(self):
        self.seen = []

    def generate(self, batch, max_new_tokens):
        self.seen.append(batch.pixels)
        return ["x"] * len(batch.ids)

    def loss_closure(self, batch, targets):
        return lambda pixels, rows=None: pixels.flatten(1).mean(1)

    def embed(self, pixels):
        return linear(pixels)


@pytest.mark.parametrize("adaptive", [False, True])
def test_inside_a_vlm_the_defence_sees_every_image_and_adaptive_losses_go_through_it(adaptive):
    from vlm_eval.contracts import Batch
    from vlm_eval.defenses import DefendedVLM

    vlm, choice = RecordingVLM(), choose_defense("ttc", {}, adaptive, 3 if adaptive else 1)
    ttc = TestTimeCounterattack(linear, choice.settings)
    defended = DefendedVLM(vlm, ttc, choice)
    x = torch.rand(2, 1, 2, 2) * 0.5 + 0.25
    defended.generate(Batch(["a", "b"], x, ["p", "p"]), 5)
    assert torch.equal(vlm.seen[0], ttc(x))
    loss = defended.loss_closure(Batch(["a", "b"], x, ["p", "p"]), ["t", "t"])(x)
    expected = sum(ttc(x, draw=k).flatten(1).mean(1) for k in (1, 2, 3)) / 3 if adaptive else x.flatten(1).mean(1)
    assert torch.allclose(loss, expected)


def test_ttc_inside_the_mini_llava_from_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--vlm", "mini-llava", "--encoder", "mini-clip", "--task", "mini-coco", "--n-samples", "4",
                 "--data-root", str(SAMPLE), "--device", "cpu", "--attack", "apgd", "--steps", "3", "--defense", "ttc",
                 "--adaptive", "--output-dir", str(out)]) == 0
    assert "defense     ttc   attacks adaptive, EOT over 1" in capsys.readouterr().out
    defense = json.loads((out / "summary.json").read_text())["provenance"]["defense"]
    assert defense["adaptive"] and defense["steps"] == 2 and defense["eps"] == pytest.approx(4 / 255)
