"""The command line: version, help, info, demo, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import mlff_export
from mlff_export.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert mlff_export.__version__ in capsys.readouterr().out


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "mlff_export.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "info" in result.stdout and "demo" in result.stdout


def test_info_describes_the_reference(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "PaiNN" in out and "H C N O" in out


def test_demo_runs_the_seed_molecules(capsys):
    assert main(["demo", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    for name in ("H2", "H2O", "CH4", "C6H6"):
        assert name in out


def test_bad_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["info", "--checkpoint", str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err and "Traceback" not in err
