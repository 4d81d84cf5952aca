"""The wiring of one evaluation, read top to bottom: plan -> models -> loop -> runner (merge).

Not an extension point: a new VLM family, encoder family, attack or task type is a module of its own
registry, and nothing here changes.
"""

from vlm_eval.run.runner import merge, resume, run

__all__ = ["merge", "resume", "run"]
