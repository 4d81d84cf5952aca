"""Attacks on images: threat model, PGD, APGD. They take per-sample loss closures and know no models."""

from vlm_eval.attacks.apgd import apgd
from vlm_eval.attacks.base import AttackResult
from vlm_eval.attacks.pgd import pgd
from vlm_eval.attacks.threat import ThreatModel, parse_eps, project, random_start
from vlm_eval.contracts import DoneFn, LossFn
from vlm_eval.registry import Registry

ATTACKS = Registry("attack")  # name -> fn(loss_fn, x, threat, steps, *, maximize, random_start, seeds, done, ...)
ATTACKS.register("pgd")(pgd)
ATTACKS.register("apgd")(apgd)

__all__ = ["ATTACKS", "AttackResult", "DoneFn", "LossFn", "ThreatModel", "apgd", "parse_eps", "pgd", "project",
           "random_start"]
