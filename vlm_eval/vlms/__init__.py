"""Vision-language model families: one folder each, found here without importing it.

A family is a subpackage `vlm_eval/vlms/<name>/` whose `FAMILY` object is a `contracts.VlmFamily`;
a VLM card's `family: <name>` names it. Nothing else in the toolkit knows a family by name.
"""

import pkgutil
from pathlib import Path

from vlm_eval.registry import Registry

VLM_FAMILIES = Registry("VLM family")
for _module in pkgutil.iter_modules([str(Path(__file__).parent)]):
    if _module.ispkg:
        VLM_FAMILIES.register_lazy(_module.name, f"vlm_eval.vlms.{_module.name}:FAMILY")
