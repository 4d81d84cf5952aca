"""Packaging beyond pyproject.toml: the wheel carries the toolkit's home (cards, schedules, recipes, sweeps
and the mini world's files) as `vlm_eval/home`, so that an installed toolkit runs without the checkout.
An editable install reads them from the checkout instead (vlm_eval.cards.default_home)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
HOME = ("tasks", "vlms", "encoders", "recipes", "schedules", "sweeps", "assets")  # also in MANIFEST.in, for the sdist


class BuildWithHome(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        home = Path(self.build_lib) / "vlm_eval" / "home"
        for name in HOME:
            shutil.rmtree(home / name, ignore_errors=True)
            shutil.copytree(ROOT / name, home / name, ignore=shutil.ignore_patterns(".*", "__pycache__"))


setup(cmdclass={"build_py": BuildWithHome})
