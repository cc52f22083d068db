"""The command line as a user meets it: help everywhere, one-line errors, a README that matches."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pathgen_batch.cli import main
from pathgen_batch.cli.reference import END, START, render, walk

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [p for p, _ in walk(main)]


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "main")
def test_every_command_has_help(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert len(result.output.strip().splitlines()) >= 3


def test_readme_cli_reference_is_current():
    text = (ROOT / "README.md").read_text()
    block = text[text.index(START) : text.index(END) + len(END)]
    fix = "python -m pathgen_batch.cli.reference --write README.md"
    assert block == render(main), f"README CLI reference is stale: run `{fix}`"


def test_user_errors_are_one_line_without_traceback(tmp_path):
    missing = tmp_path / "nope.svs"
    result = CliRunner().invoke(main, ["slides", "inspect", str(missing)])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "nope.svs" in lines[0]
    assert "Traceback" not in result.output


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and "pathgen-batch" in result.output
