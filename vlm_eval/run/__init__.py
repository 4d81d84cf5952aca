"""The wiring of one evaluation, read top to bottom: plan -> models -> loop -> runner (merge).

Not an extension point: a new VLM family, encoder family, attack or task type is a module of its own
registry, and nothing here changes. `run`, `resume` and `merge` are imported on first use, so that
commands which only read run folders (`sweep --help`, `rescore`, `compare`) start without torch.
"""

__all__ = ["merge", "resume", "run"]


def __getattr__(name: str):
    if name in __all__:
        from vlm_eval.run import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'vlm_eval.run' has no attribute {name!r}")
