"""How the toolkit names itself in help and messages: its program name as invoked, and its version."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "vlm-robust-eval"  # "vlm-eval" on PyPI is another project; the import package is vlm_eval


def program(command: str = "") -> str:
    """"vlm-eval table" when run as the `vlm-eval` script, "python -m vlm_eval table" otherwise."""
    name = "vlm-eval" if Path(sys.argv[0]).name == "vlm-eval" else "python -m vlm_eval"
    return f"{name} {command}".strip()


def version() -> str:
    """The installed distribution's version; "unknown" when the package runs without being installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"
