"""Test-time defences: [0, 1] pixels -> [0, 1] pixels, applied where pixels enter the model.

`--defense ttc` (the test-time counterattack, `ttc.py`) or `random-noise` (its baseline: the random
start alone), with `--defense-arg key=value` for its settings. An attack on a defended model is
*non-adaptive* by default, as the TTC paper evaluates it (computed on the undefended model, the
defence applied after), or *adaptive* with `--adaptive` (through the defence, its loss averaged over
`--eot-samples` draws of the defence's randomness).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from vlm_eval.contracts import VLM, Batch, Classifier, Defense, Json, LossFn
from vlm_eval.defenses.ttc import TtcSettings
from vlm_eval.errors import VlmEvalError

DEFENSES = {"ttc": TtcSettings(), "random-noise": TtcSettings(steps=0)}  # name -> its default settings
RADII = ("eps", "step_size")  # settings written as radii ("4/255")


@dataclass(frozen=True)
class DefenseChoice:
    """What the config asks for: the defence, its settings, and how attacks treat it."""

    name: str
    settings: TtcSettings
    adaptive: bool = False
    eot_samples: int = 1
    tau_encoder: str | None = None  # the encoder card whose embedding measures tau (None: the card's `original`)

    def describe(self) -> dict[str, Json]:
        return {"name": self.name, **dataclasses.asdict(self.settings), "adaptive": self.adaptive,
                "eot_samples": self.eot_samples, "tau_encoder": self.tau_encoder}


def choose_defense(name: str, args: dict[str, str], adaptive: bool, eot_samples: int) -> DefenseChoice | None:
    """`--defense NAME --defense-arg k=v ... [--adaptive --eot-samples N]`; None for `none`."""
    if name == "none":
        if args or adaptive:
            raise VlmEvalError("--defense-arg and --adaptive need a --defense (ttc or random-noise)")
        return None
    if name not in DEFENSES:
        raise VlmEvalError(f"unknown defense {name!r}; known: none, {', '.join(DEFENSES)}")
    if eot_samples < 1 or (eot_samples != 1 and not adaptive):
        raise VlmEvalError(f"--eot-samples (got {eot_samples}) takes a number >= 1, for an --adaptive attack")
    values, tau_encoder = dict(args), args.get("tau_encoder")
    values.pop("tau_encoder", None)
    known = [f.name for f in dataclasses.fields(TtcSettings)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise VlmEvalError(f"--defense-arg {unknown[0]}: unknown; {name} takes {', '.join([*known, 'tau_encoder'])}")
    parsed = {key: _setting(key, value) for key, value in values.items()}
    return DefenseChoice(name, dataclasses.replace(DEFENSES[name], **parsed), adaptive, eot_samples, tau_encoder)


def _setting(key: str, value: str) -> float | int:
    from vlm_eval.attacks.threat import parse_eps

    try:
        if key in RADII:
            return parse_eps(value)
        return int(value) if key == "steps" else float(value)
    except (TypeError, ValueError) as exc:
        raise VlmEvalError(f"--defense-arg {key}={value}: not a number ({exc})") from None


class Defended:
    """A model (classifier or VLM) behind a defence: what is not defended is the model's own."""

    def __init__(self, model: Classifier | VLM, defense: Defense, choice: DefenseChoice):
        self.model, self.defense, self.choice = model, defense, choice
        self.image_size = model.image_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.model.preprocess(image)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.embed(pixels)  # the undefended encoder's: what the counterattack moves

    def draws(self) -> range:
        """The defence's draws an adaptive attack averages over (the prediction itself uses draw 0)."""
        return range(1, 1 + self.choice.eot_samples)


class DefendedClassifier(Defended):
    """A classifier whose images pass through a defence first; `attack_logits` is what an attack sees."""

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self.defense(pixels))

    def attack_logits(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Adaptive: the defended logits under each of `eot_samples` draws; otherwise the undefended logits."""
        if not self.choice.adaptive:
            return [self.model(pixels)]
        return [self.model(self.defense(pixels, draw=k)) for k in self.draws()]


class DefendedVLM(Defended):
    """A VLM whose images pass through a defence first, wherever they enter it (generation and attack
    losses); the semantic checks' embeddings stay those of the undefended encoder."""

    @property
    def vlm(self) -> VLM:
        return self.model

    @property
    def dtype(self) -> torch.dtype:
        return self.vlm.dtype

    def prompt(self, kind: str, question: str | None = None, demonstrations: Sequence[tuple] = (),
               with_images: bool = False) -> str:
        return self.vlm.prompt(kind, question, demonstrations, with_images)

    def generate(self, batch: Batch, max_new_tokens: int) -> list[str]:
        return self.vlm.generate(dataclasses.replace(batch, pixels=self.defense(batch.pixels)), max_new_tokens)

    def loss_closure(self, batch: Batch, targets: list[str]) -> LossFn:
        """Adaptive: the loss through the defence, averaged over `eot_samples` draws; otherwise the undefended."""
        loss = self.vlm.loss_closure(batch, targets)
        if not self.choice.adaptive:
            return loss

        def through_defense(pixels: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            draws = [loss(self.defense(pixels, draw=k), rows) for k in self.draws()]
            return sum(draws) / len(draws)

        return through_defense

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vlm.image_embeddings(pixels)

    def describe(self) -> dict[str, Json]:
        return self.vlm.describe()
