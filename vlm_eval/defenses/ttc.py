"""TTC, the test-time counterattack of Xing et al. (CVPR 2025): no training, [0, 1] pixels in and out.

Draw d0 ~ U[-eps, eps] and measure tau = |f(x + d0) - f(x)| / |f(x)| with the original encoder's
embedding f. An adversarial image is "falsely stable": tau < tau_threshold. For those, N sign steps
of size alpha *ascend* |f(x + d) - f(x)|^2 within eps, and the image becomes x + sum_k w_k d_k with
w = softmax(beta * k) over k = 0..N; any other image becomes x + d0. With `steps: 0` it is the
random-noise baseline (x + d0 for every image).

The sign steps and the threshold have zero derivative almost everywhere, so the gradient of the
defended image in x is that of x + D with D held fixed: attacks get it by autograd, with no
approximation (`vlm_eval.defenses` averages it over draws of d0 for an adaptive attack).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from vlm_eval.attacks.threat import ThreatModel, random_start

Embed = Callable[[torch.Tensor], torch.Tensor]  # [0, 1] pixels -> (B, D) image embeddings


@dataclass(frozen=True)
class TtcSettings:
    """The paper's defaults (its code's --ttc_eps 4, --ttc_numsteps 2, --ttc_stepsize 1, --tau_thres 0.2, --beta 2)."""

    eps: float = 4 / 255
    steps: int = 2
    step_size: float = 1 / 255
    tau_threshold: float = 0.2
    beta: float = 2.0


class TestTimeCounterattack:
    """`defense(pixels, draw=0) -> pixels`. `embed` runs the counterattack (the evaluated encoder); `tau_embed`
    measures tau (the original encoder, when the evaluated one is fine-tuned, as the reference code does)."""

    __test__ = False  # not a pytest class

    def __init__(self, embed: Embed, settings: TtcSettings = TtcSettings(), tau_embed: Embed | None = None):
        self.embed, self.settings, self.tau_embed = embed, settings, tau_embed or embed

    def __call__(self, pixels: torch.Tensor, draw: int = 0) -> torch.Tensor:
        x = pixels.detach()
        deltas, counter = self.deltas(x, draw)
        weights = torch.softmax(self.settings.beta * torch.arange(len(deltas), dtype=torch.float32), 0)
        weighted = sum(w * d for w, d in zip(weights.tolist(), deltas))
        chosen = torch.where(counter.view(-1, *[1] * (x.dim() - 1)), weighted, deltas[0])
        return (pixels + chosen).clamp(0, 1)

    def deltas(self, x: torch.Tensor, draw: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(d_0, ..., d_N), and which images are counterattacked (tau under the threshold)."""
        s = self.settings
        delta = random_start(x, ThreatModel("linf", s.eps, f"{s.eps}"), pixel_seeds(x, draw)) - x
        if s.steps == 0:
            return [delta], torch.zeros(len(x), dtype=torch.bool, device=x.device)
        with torch.no_grad():
            clean = self.embed(x).float()
            tau = self.tau(x, delta, clean if self.tau_embed is self.embed else None)
        deltas = [delta]
        for _ in range(s.steps):
            delta = delta.detach().requires_grad_(True)
            with torch.enable_grad():
                distance = (self.embed(x + delta).float() - clean).pow(2).sum()
                (grad,) = torch.autograd.grad(distance, delta)
            delta = (delta.detach() + s.step_size * grad.sign()).clamp(-s.eps, s.eps)
            delta = (x + delta).clamp(0, 1) - x
            deltas.append(delta)
        return deltas, tau < s.tau_threshold

    def tau(self, x: torch.Tensor, delta: torch.Tensor, clean: torch.Tensor | None) -> torch.Tensor:
        """|f(x + d0) - f(x)| / |f(x)| per image, f the tau encoder."""
        clean = self.tau_embed(x).float() if clean is None else clean
        return (self.tau_embed(x + delta).float() - clean).norm(dim=-1) / clean.norm(dim=-1)


def pixel_seeds(x: torch.Tensor, draw: int) -> list[int]:
    """A seed per image from its own 8-bit pixels and the draw, so the defence gives an image the same
    answer whatever batch it is in, and a resumed run the answers of an uninterrupted one. Integer
    arithmetic on the device (exact, so independent of the batch); one transfer of B numbers per call."""
    levels = (x.detach().flatten(1) * 255).round().long()
    weights = torch.arange(1, levels.shape[1] + 1, device=x.device) * 2654435761 % 2147483647
    return (((levels * weights).sum(1) + 7919 * draw) % 2147483647).tolist()
