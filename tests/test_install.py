"""A wheel of the toolkit works without the checkout: its cards, schedules and mini world travel inside it."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # builds and installs a ~90 MB wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The wheel, installed on its own (no dependencies: they come from this environment) outside the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(ROOT)], check=True)
    [wheel] = (tmp / "dist").glob("*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "VLM_EVAL_HOME"} | {"PYTHONPATH": str(tmp / "site")}
    return wheel, env | {"SITE": str(tmp / "site"), "WORK": str(tmp)}


def test_the_wheel_carries_the_home_and_no_stray_files(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    for path in ("vlm_eval/home/tasks/demo.yaml", "vlm_eval/home/schedules/captioning.yaml",
                 "vlm_eval/home/recipes/mini-fare4.yaml", "vlm_eval/home/assets/miniworld/mini-clip.safetensors",
                 "vlm_eval/templates/report.html.j2"):
        assert path in names
    assert not [n for n in names if "/." in n or "__pycache__" in n or n.startswith(("tests/", "docs/"))]


def test_an_installed_toolkit_runs_without_the_checkout(installed):
    _, env = installed
    site, work = Path(env["SITE"]), Path(env["WORK"])

    def run(*args: str) -> str:
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True,
                              check=True).stdout

    assert run("-c", "import vlm_eval; print(vlm_eval.__file__)").startswith(str(site))
    assert run("-m", "vlm_eval", "--version").strip() == "python -m vlm_eval 0.1.0"
    script = subprocess.run([site / "bin" / "vlm-eval", "--version"], env=env, capture_output=True, text=True)
    assert script.stdout.strip() == "vlm-eval 0.1.0"
    run("-m", "vlm_eval", "--vlm", "mini-llava", "--encoder", "mini-clip", "--task", "demo", "--n-samples", "2",
        "--bootstrap", "0", "--output-dir", "run")
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["n_samples"] == 2 and summary["provenance"]["packages"]["vlm-robust-eval"] == "0.1.0"
    assert run("-c", "from vlm_eval import cards; print(cards.CARD_ROOT)").strip() == str(site / "vlm_eval" / "home")
