"""The code stays ruff clean, its imports run one way, and its shared words have one spelling; CI fails otherwise."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from guard import inbox
from guard.vocabulary import EventKind, LedPattern, State


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


# the words the loop's messages were before they were types (guard/inbox.py); "command" is also a sink type
LOOP_WORDS = {"button_down", "button_up", "button_held", "refused", "source-failed", "delivered", "stop"}


def _bare_words(path: Path, words: set[str]) -> list[str]:
    """String constants in `path` (docstrings aside) that spell one of `words`."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [f"{path.name}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in words
            and id(node) not in docstrings]


def test_no_event_kind_led_pattern_state_or_loop_message_is_a_bare_string():
    """Every use of these words goes through guard/vocabulary.py or guard/inbox.py, so a tool finds them all."""
    words = {w.value for vocabulary in (EventKind, LedPattern, State) for w in vocabulary} | LOOP_WORDS
    found = [hit for path in sorted((ROOT / "guard").glob("*.py")) if path.name not in ("vocabulary.py", "inbox.py")
             for hit in _bare_words(path, words)]
    assert found == []


def test_the_bare_word_check_finds_a_bare_word(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""released is fine in a docstring"""\nif kind == "released":\n    show("pending_voice")\n')
    assert _bare_words(module, {"released", "pending_voice"}) == ["m.py:2 'released'", "m.py:3 'pending_voice'"]


def test_every_message_has_a_lane_and_anything_else_is_refused():
    import numpy as np
    messages = [inbox.ButtonMoved(inbox.ButtonMove.DOWN, 0.0), inbox.Stop(), inbox.Command("remote", "mute"),
                inbox.SourceFailed("gone", 1), inbox.Delivered(None), inbox.Command("remote", "cancel"),
                inbox.Refusal("assist", "h", "k", "r", 1), inbox.Frame(np.zeros(4, np.int16), 1)]
    lanes = [inbox.lane_of(m) for m in messages]
    L = inbox.Lane
    assert lanes == [L.URGENT, L.URGENT, L.URGENT, L.LOCAL, L.LOCAL, L.REMOTE, L.REMOTE, L.FRAMES]
    with pytest.raises(TypeError):
        inbox.lane_of(("command", ("remote", "mute")))


CLASS_LINES = 255  # "no class over about 250 lines": a class past it does a second job; split it


def _long_classes(path: Path) -> list[str]:
    return [f"{path.name}:{node.name} is {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)
            and node.end_lineno - node.lineno + 1 > CLASS_LINES]


def test_no_class_is_over_about_250_lines():
    assert [line for path in sorted((ROOT / "guard").glob("*.py")) for line in _long_classes(path)] == []


def test_the_class_length_check_finds_a_long_class(tmp_path):
    long = tmp_path / "long.py"
    long.write_text("class Long:\n" + "    x = 1\n" * CLASS_LINES)
    assert _long_classes(long) == [f"long.py:Long is {CLASS_LINES + 1} lines"]
