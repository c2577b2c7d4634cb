"""The README's promises: its ten lines of Python run as printed, and its CI test command is the
one .ci/run extracts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_ten_lines_run_and_every_print_shows_something():
    (example,) = python_blocks(README.read_text())
    code_lines = [line for line in example.splitlines() if line.strip()]
    assert len(code_lines) <= 10
    result = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip().splitlines()
    assert len(printed) == sum(line.startswith("print(") for line in code_lines) == 2
    energies = [float(value) for value in re.findall(r"-?\d+\.\d+", printed[-1])]
    assert len(energies) == 2 and all(energy < 0 for energy in energies), printed[-1]  # H2O and CH4, in eV


def test_ci_runs_the_readme_test_command():
    commands = [line for line in README.read_text().splitlines() if re.match(r"^python3 -m venv .*pytest", line)]
    assert len(commands) == 1, "README must have one test command line for .ci/run to find"
    ci_script = (README.parent / ".ci" / "run").read_text()
    assert "grep -m1 -E '^python3 -m venv .*pytest' README.md" in ci_script
