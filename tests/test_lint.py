"""The code stays ruff clean and its imports run one way; CI fails otherwise."""

import subprocess
import sys

from conftest import ROOT


def test_ruff_is_clean():
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "ruff"), "check", str(ROOT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_reading_the_config_loads_no_model_runtime():
    """config.py is read by every command, `guard --help` and `guard config` too: no numpy, no onnxruntime
    (importing guard.wake for its settings types cost 147 ms)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import guard.config"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    loaded = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "guard.config" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("numpy", "onnxruntime", "guard") and
                m not in ("guard", "guard.config", "guard.trust", "guard.errors")}, sorted(loaded)
