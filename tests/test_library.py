"""docs/library.md: every Python block runs, in order, from the repository root (the examples stay true)."""

import re
from pathlib import Path

import pytest

import vlm_eval

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # loads the mini world's models and runs a short attack


def test_the_library_examples_run(monkeypatch):
    monkeypatch.chdir(ROOT)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "library.md").read_text(), re.DOTALL)
    assert len(blocks) == 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/library.md", "exec"), namespace)
    assert namespace["captions"] == vlm_eval.generate(namespace["vlm"], namespace["images"])  # deterministic
    assert namespace["result"].run_dir.is_dir()


def test_import_stays_light_and_names_the_api():
    import subprocess
    import sys

    code = "import sys, vlm_eval; print('torch' in sys.modules, sorted(vlm_eval.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.startswith("False") and "'attack'" in out and "'evaluate'" in out
    with pytest.raises(AttributeError, match="no attribute 'attck'"):
        vlm_eval.attck
