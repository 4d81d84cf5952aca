"""Every vlm_eval command the README and docs/ show parses with today's options (no command is run)."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from vlm_eval.cli import main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"\.\.\.|\[|\$|<|…")  # "...", [--optional], $VARIABLE, <choice>: a pattern, not a command


class Parsed(Exception):
    """Raised once the command's options are parsed, before it does anything."""


def shown_commands() -> list[tuple[str, list[str]]]:
    """(page:line, argv after the program) of each vlm_eval command in an indented or fenced block."""
    found = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            text = line.strip()
            while text.endswith("\\") and number < len(lines):
                text = text[:-1] + " " + lines[number].strip()
                number += 1
            match = re.search(r"(?:python -m vlm_eval|vlm-eval|torchrun .*?-m vlm_eval)\b(?![./\w])(.*)", text)
            if not line.startswith(("    ", "\t")) and not text.startswith(("python -m vlm_eval", "vlm-eval")):
                continue
            if match is None or "accelerate" in text:
                continue
            rest = match.group(1).split(" # ")[0].split("  #")[0].split(" && ")[0].split(" | ")[0].removesuffix(" &")
            if PLACEHOLDER.search(rest):
                continue
            found.append((f"{page.relative_to(ROOT)}:{number}", shlex.split(rest)))
    return found


COMMANDS = shown_commands()


def test_the_pages_show_commands():
    assert len(COMMANDS) > 40 and any(argv[:1] == ["compare"] for _, argv in COMMANDS)


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_a_shown_command_parses(where, argv, monkeypatch):
    parse, parse_known = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    inside: list[bool] = []

    def parse_then_stop(self, args=None, namespace=None):
        inside.append(True)
        parse(self, args, namespace)  # exits with status 2 on an unknown option or a bad value
        raise Parsed

    def parse_known_then_stop(self, args=None, namespace=None):
        parsed = parse_known(self, args, namespace)
        if not inside:  # called by the command itself (finetune: the rest are recipe overrides)
            raise Parsed
        return parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_then_stop)
    try:
        code = main(argv)
    except Parsed:
        return
    except SystemExit as exit:
        pytest.fail(f"{where}: `{shlex.join(argv)}` does not parse (exit {exit.code})")
    assert code == 0, f"{where}: `{shlex.join(argv)}` stopped before parsing its options (exit {code})"
