"""The code stays ruff clean and its imports run one way; CI fails otherwise."""

import subprocess
import sys

from conftest import ROOT


def test_ruff_is_clean():
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "ruff"), "check", str(ROOT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _loaded_by(module: str) -> set[str]:
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    return {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}


def test_the_mqtt_adapter_sits_below_the_privacy_gate():
    """mqtt.py speaks of states and events (guard.vocabulary); it never imports the gate or the models."""
    loaded = _loaded_by("guard.mqtt")
    assert "guard.mqtt" in loaded and "guard.vocabulary" in loaded
    assert not loaded & {"guard.gate", "guard.wake", "guard.confirm", "onnxruntime"}, sorted(loaded)


def test_reading_the_config_loads_no_model_runtime():
    """config.py is read by every command, `guard --help` and `guard config` too: no numpy, no onnxruntime
    (importing guard.wake for its settings types cost 147 ms)."""
    loaded = _loaded_by("guard.config")
    assert "guard.config" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("numpy", "onnxruntime", "guard") and
                m not in ("guard", "guard.config", "guard.trust", "guard.errors")}, sorted(loaded)
