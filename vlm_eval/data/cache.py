"""Where the toolkit writes what it makes from data: generated worlds and converted data sets."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$VLM_EVAL_CACHE, or ~/.cache/vlm_eval."""
    return Path(os.environ.get("VLM_EVAL_CACHE") or Path.home() / ".cache" / "vlm_eval")
