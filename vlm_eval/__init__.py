"""vlm_eval: adversarial robustness evaluation of vision-language models with swappable CLIP encoders."""

__version__ = "0.1.0"
