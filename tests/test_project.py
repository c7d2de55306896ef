"""The project's set-up promises: README's two commands and CI running the same test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in setup.splitlines() if line.startswith("    ")]


def test_readme_gives_two_setup_commands():
    main_job, tests = _readme_commands()
    assert "scorehamiltonian report --example" in main_job and "torch==2.13.0" in main_job
    assert "pytest" in tests and "torch==2.13.0" in tests


def test_ci_runs_exactly_the_readme_test_command():
    _, tests = _readme_commands()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


def test_console_script_is_declared():
    assert re.search(r'^scorehamiltonian = "scorehamiltonian\.app\.cli:main"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
