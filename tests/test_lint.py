"""The code stays ruff clean; CI fails otherwise."""

import subprocess

from conftest import ROOT


def test_ruff_is_clean():
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "ruff"), "check", str(ROOT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
