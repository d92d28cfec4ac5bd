"""The audit log: a hash chain that names the first edited, deleted or reordered line."""

import json
import stat

import numpy as np
import pytest

from guard import audit, cli
from guard.audit import AuditLog


@pytest.fixture
def log_path(tmp_path):
    path = tmp_path / "state" / "audit.jsonl"
    log = AuditLog(path, "kitchen")
    log.record("wake", model="alexa", score=0.97, utterance="u1")
    log.record("pending", utterance="u1")
    log.record("released", utterance="u1", sink="directory", confirmed_by="button", duration_seconds=3.2)
    log.record("wake", model="hey_jarvis", score=0.88, utterance="u2")
    log.record("discarded", utterance="u2", reason="timeout")
    return path


def _verify(path, capsys) -> tuple[int, dict]:
    code = cli.main(["audit", "--verify", "--json", "--path", str(path)])
    return code, json.loads(capsys.readouterr().out)


def _edit(path, change) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(change(lines)) + "\n")


def test_untouched_log_verifies(log_path, capsys):
    code, verdict = _verify(log_path, capsys)
    assert code == 0 and verdict["intact"] and verdict["records"] == 5


def test_log_is_private_and_reopening_continues_the_chain(log_path, capsys):
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(log_path.parent.stat().st_mode) == 0o700
    AuditLog(log_path, "kitchen").record("muted", by="button")
    code, verdict = _verify(log_path, capsys)
    assert code == 0 and verdict["records"] == 6
    assert audit.read(log_path)[-1]["seq"] == 6


def _set_score(lines):
    record = json.loads(lines[0])
    record["score"] = 0.1
    return [json.dumps(record, separators=(",", ":"))] + lines[1:]


def _forge_middle(lines):
    """Rewrite line 3 and fix its own hash, as a careful forger would; line 4 still catches it."""
    record = json.loads(lines[2])
    record["sink"] = "elsewhere"
    record["hash"] = audit._digest(audit._canonical(record))
    return lines[:2] + [json.dumps(record, separators=(",", ":"))] + lines[3:]


@pytest.mark.parametrize(("change", "bad_line"), [
    (_set_score, 1),
    (_forge_middle, 4),
    (lambda ls: ls[:1] + ls[2:], 2),                   # line 2 deleted
    (lambda ls: ls[:1] + [ls[2], ls[1]] + ls[3:], 2),  # lines 2 and 3 swapped
    (lambda ls: ls[:4] + [ls[4][:40]], 5),             # last line cut short
    (lambda ls: ls[:4] + [ls[4].replace("timeout", "cancel")], 5),  # last line edited
    (lambda ls: ls[1:], 1),                            # first line deleted
], ids=["edited", "forged-with-own-hash", "deleted", "reordered", "truncated", "last-edited", "head-deleted"])
def test_each_kind_of_tampering_names_the_first_bad_line(log_path, capsys, change, bad_line):
    _edit(log_path, change)
    code, verdict = _verify(log_path, capsys)
    assert code == 1 and not verdict["intact"]
    assert verdict["bad_line"] == bad_line and verdict["reason"]


def test_plain_verify_names_the_line(log_path, capsys):
    _edit(log_path, lambda ls: ls[:1] + ls[2:])
    assert cli.main(["audit", "--verify", "--path", str(log_path)]) == 1
    assert capsys.readouterr().out.startswith(f"{log_path}: line 2: ")


@pytest.mark.parametrize("value", [np.zeros(1280, np.int16), b"\x00\x01", [1, 2, 3]])
def test_audio_cannot_be_written_to_the_log(tmp_path, value):
    log = AuditLog(tmp_path / "audit.jsonl", "kitchen")
    with pytest.raises(TypeError, match="must be str, number, bool or None"):
        log.record("wake", samples=value)
    assert not (tmp_path / "audit.jsonl").exists()


def test_audit_shows_records(log_path, capsys):
    assert cli.main(["audit", "--path", str(log_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and "kitchen" in lines[0] and "wake" in lines[0] and "model=alexa" in lines[0]
    assert cli.main(["audit", "--json", "--path", str(log_path)]) == 0
    assert [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()] == [
        "wake", "pending", "released", "wake", "discarded"]


def test_missing_log_is_one_line(tmp_path, capsys):
    assert cli.main(["audit", "--verify", "--path", str(tmp_path / "none.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("guard: error: ") and "no audit log here yet" in err and len(err.splitlines()) == 1


def test_device_id_comes_from_config_or_hostname(tmp_path):
    from guard import config
    assert config.DeviceConfig("kitchen").resolved_id() == "kitchen"
    derived = config.DeviceConfig().resolved_id()
    assert derived and all(c.isalnum() and c.islower() or c.isdigit() or c in "_-" for c in derived)
    bad = tmp_path / "g.toml"
    bad.write_text('[device]\nid = "Kitchen Pi"\n')
    with pytest.raises(config.ConfigError, match=r"\[device\] id = 'Kitchen Pi': must be 1-64 characters"):
        config.load(str(bad))
