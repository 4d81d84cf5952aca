"""A fine-tuning recipe: one YAML card in `recipes/` (or any file), with `--key value` overrides.

    method: fare                  # a registered objective: fare, tecoa, simclip, simclip-released, mmcoa
    encoder: mini-clip            # the base encoder: a card name, a checkpoint path or hf-hub:org/name
    data: {kind: captions, ...}   # what it trains on (vlm_eval.finetune.data)
    eps: 4/255                    # the l-inf radius of the inner attack
    steps: 500                    # optimiser steps (each over `batch_size` samples)
    ...

Overrides reach nested fields with dots: `--inner.steps 5 --data.limit 64`; values are read as YAML
(`--lr 1e-4`, `--precision fp32`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vlm_eval import cards
from vlm_eval.contracts import Json
from vlm_eval.errors import CardError


@dataclass(frozen=True)
class InnerAttack:
    """The inner maximisation: PGD with a uniform random start and momentum on the sign of the gradient."""

    steps: int = 10
    step_size: str = "1/255"
    momentum: float = 0.9
    random_start: bool = True


@dataclass(frozen=True)
class Recipe:
    method: str
    encoder: str
    data: dict[str, Json]
    eps: str = "4/255"
    steps: int = 1000
    batch_size: int = 128
    grad_accum: int = 1  # micro-batches per optimiser step (batch_size is the whole step's)
    lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup: int = 70
    schedule: str = "cosine"  # cosine (to 0 after warm-up) or constant
    inner: InnerAttack = InnerAttack()
    precision: str = "bf16"  # autocast of forward passes: bf16 or fp32
    templates: tuple[str, ...] = ("This is a photo of a {}",)  # TeCoA's class prompts
    # MMCoA's text adversary: {kind: hotflip} (gradient search, no extra model) or
    # {kind: bert, model: <masked LM path or hub id>, k: 8} (BERT-Attack, as the paper)
    text_attack: dict[str, Json] = field(default_factory=lambda: {"kind": "hotflip"})
    logit_scale: float | None = None  # TeCoA's s; None: the encoder's own learned scale (100 for OpenAI CLIP)
    eval_every: int = 100  # steps between evaluations on the held-out batch (0: only at the end)
    eval_size: int = 64  # samples in the held-out batch
    save_every: int = 100  # steps between training-state checkpoints (0: only at the end)
    seed: int = 0
    name: str | None = None  # of the exported encoder card (default: the run folder's name)
    description: str = ""
    source: str | None = None  # the recipe file, filled when loaded

    def describe(self) -> dict[str, Json]:
        return dataclasses.asdict(self)


def load_recipe(name_or_path: str, overrides: dict[str, str] | None = None) -> Recipe:
    """A recipe card by name (`recipes/<name>.yaml`) or path, with `overrides` ({"inner.steps": "5"}) applied."""
    path = Path(name_or_path)
    if not path.is_file():
        path = cards.card_dir("recipes") / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in cards.card_dir("recipes").glob("*.yaml"))
        raise CardError(f"no recipe {name_or_path!r}: not a file, nor one of {', '.join(known)}")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CardError(f"cannot read recipe {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise CardError(f"recipe {path} must be a YAML mapping")
    for key, value in (overrides or {}).items():
        _override(raw, key, value, path)
    return recipe_from_dict(raw, str(path))


def recipe_from_dict(raw: dict[str, Json], source: str) -> Recipe:
    known = {f.name for f in dataclasses.fields(Recipe)} - {"source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CardError(f"recipe {source}: unknown field(s) {unknown}; allowed: {sorted(known)}")
    missing = [k for k in ("method", "encoder", "data") if k not in raw]
    if missing:
        raise CardError(f"recipe {source}: needs {missing}")
    values = dict(raw)
    inner = values.pop("inner", {}) or {}
    inner_known = {f.name for f in dataclasses.fields(InnerAttack)}
    if not isinstance(inner, dict) or set(inner) - inner_known:
        raise CardError(f"recipe {source}: `inner` takes {sorted(inner_known)}, got {inner!r}")
    if "templates" in values:
        values["templates"] = tuple(values["templates"])
    for key in FLOATS:
        if values.get(key) is not None:  # logit_scale may be None: the encoder's own
            values[key] = _number(values[key], key, source)
    if "momentum" in inner:
        inner = {**inner, "momentum": _number(inner["momentum"], "inner.momentum", source)}
    try:
        recipe = Recipe(**values, inner=InnerAttack(**inner), source=source)
    except TypeError as exc:
        raise CardError(f"recipe {source}: {exc}") from exc
    _check(recipe)
    return recipe


FLOATS = ("lr", "weight_decay", "logit_scale")


def _number(value: Json, key: str, source: str) -> float:
    """A float field; YAML reads 1e-4 (no dot) as a string, so numbers in strings count too."""
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise CardError(f"recipe {source}: {key} must be a number, got {value!r}") from None


def _override(raw: dict[str, Json], key: str, value: str, path: Path) -> None:
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise CardError(f"--{key}: {part!r} of recipe {path} is not a mapping")
    node[last] = yaml.safe_load(value)


def _check(recipe: Recipe) -> None:
    from vlm_eval.attacks.threat import parse_eps

    problems = [f"{name} must be >= 1" for name in ("steps", "batch_size", "grad_accum")
                if not isinstance(getattr(recipe, name), int) or getattr(recipe, name) < 1]
    if recipe.batch_size % recipe.grad_accum:
        problems.append(f"batch_size {recipe.batch_size} is not a multiple of grad_accum {recipe.grad_accum}")
    if recipe.schedule not in ("cosine", "constant"):
        problems.append(f"schedule {recipe.schedule!r} (cosine or constant)")
    if not isinstance(recipe.text_attack, dict) or recipe.text_attack.get("kind") not in ("hotflip", "bert"):
        problems.append(f"text_attack {recipe.text_attack!r} ({{kind: hotflip}} or {{kind: bert, model: ...}})")
    elif recipe.text_attack["kind"] == "bert" and not recipe.text_attack.get("model"):
        problems.append("text_attack of kind bert needs `model` (a masked LM's folder or hub id)")
    if recipe.precision not in ("bf16", "fp32"):
        problems.append(f"precision {recipe.precision!r} (bf16 or fp32)")
    try:
        parse_eps(recipe.eps), parse_eps(recipe.inner.step_size)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise CardError(f"recipe {recipe.source}: " + "; ".join(problems))
