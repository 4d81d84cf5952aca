"""Vision-language model adapters: generation and per-sample loss closures over [0, 1] pixels.

Adapters are registered lazily so that listing models never imports transformers.
"""

from vlm_eval.registry import Registry

VLM_FAMILIES = Registry("VLM family")
VLM_FAMILIES.register_lazy("llava", "vlm_eval.vlms.llava:load_llava")
