"""vlm_eval: adversarial robustness evaluation of vision-language models with swappable CLIP encoders.

The library API (`load_vlm`, `load_encoder`, `generate`, `attack`, `evaluate`; docs/library.md) is imported
on first use, so that `import vlm_eval` stays light.
"""

from vlm_eval.program import version

__version__ = version()
API = ("load_vlm", "load_encoder", "generate", "attack", "evaluate", "Result")


def __getattr__(name: str):
    if name in API:
        from importlib import import_module

        return getattr(import_module("vlm_eval.api"), name)
    raise AttributeError(f"module 'vlm_eval' has no attribute {name!r}")


__all__ = ["__version__", *API]
