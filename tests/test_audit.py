"""The audit log: a hash chain that names the first edited, deleted or reordered line."""

import contextlib
import errno
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, exhaust, fill

from guard import audit, cli
from guard.audit import AuditLog
from guard.errors import AuditError


@pytest.fixture
def log_path(tmp_path):
    path = tmp_path / "state" / "audit.jsonl"
    log = AuditLog(path, "kitchen")
    log.record("wake", model="alexa", score=0.97, utterance="u1")
    log.record("pending", utterance="u1")
    log.record("released", utterance="u1", sink="directory", confirmed_by="button", duration_seconds=3.2)
    log.record("wake", model="hey_jarvis", score=0.88, utterance="u2")
    log.record("discarded", utterance="u2", reason="timeout")
    log.close()
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
    assert derived == config.DeviceConfig().resolved_id(), "stable across restarts"


def test_two_pis_with_the_same_hostname_get_different_ids(tmp_path, monkeypatch):
    from guard import config
    ids = set()
    for machine in ("0f4c1e2d3b5a69788796a5b4c3d2e1f0", "a1b2c3d4e5f60718293a4b5c6d7e8f90"):
        (tmp_path / machine).write_text(machine + "\n")
        monkeypatch.setattr(config, "MACHINE_ID", str(tmp_path / machine))
        monkeypatch.setattr(config.socket, "gethostname", lambda: "raspberrypi")
        ids.add(config.DeviceConfig().resolved_id())
    assert len(ids) == 2 and all(i.startswith("raspberrypi-") and len(i) == len("raspberrypi-") + 6 for i in ids)
    assert not any("0f4c1e" in i or "a1b2c3" in i for i in ids), "the machine id itself never goes out"
    bad = tmp_path / "g.toml"
    bad.write_text('[device]\nid = "Kitchen Pi"\n')
    with pytest.raises(config.ConfigError, match=r"\[device\] id = 'Kitchen Pi': must be 1-64 characters"):
        config.load(str(bad))


def test_a_crash_torn_last_line_is_sealed_at_the_next_start_and_reported_as_a_crash(log_path, capsys):
    with log_path.open("ab") as f:
        f.write(b'{"seq":6,"time":"2026-11-22T10:00:00.000+00:00","device":"kit')  # power lost mid-write
    code, verdict = _verify(log_path, capsys)
    assert code == 1 and verdict["bad_line"] == 6, "before the next start it cannot be told from a cut"
    log = AuditLog(log_path, "kitchen")
    log.record("muted", by="button")
    log.close()
    code, verdict = _verify(log_path, capsys)
    assert code == 0 and verdict["intact"] and verdict["crashes"] == [6] and verdict["records"] == 7
    records = audit.read(log_path)
    assert records[6]["event"] == "sealed" and records[6]["torn_line"] == 6 and records[7]["event"] == "muted"
    assert cli.main(["audit", "--verify", "--path", str(log_path)]) == 0
    assert "line 6 torn by a crash" in capsys.readouterr().out


def test_a_forged_seal_is_still_tampering(log_path, capsys):
    _edit(log_path, lambda ls: ls[:2] + ["garbage that was never a record"] + ls[3:])
    code, verdict = _verify(log_path, capsys)
    assert code == 1 and verdict["bad_line"] == 3 and verdict["crashes"] == []


def test_verify_checks_the_device_id(log_path, capsys):
    assert cli.main(["audit", "--verify", "--path", str(log_path), "--device", "kitchen"]) == 0
    capsys.readouterr()
    assert cli.main(["audit", "--verify", "--path", str(log_path), "--device", "hall"]) == 1
    assert "line 1: written by device 'kitchen', not 'hall'" in capsys.readouterr().out


def test_a_second_writer_is_refused(log_path):
    first = AuditLog(log_path, "kitchen")
    first.open()
    second = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                             "from guard.audit import AuditLog; AuditLog(Path(sys.argv[1]), 'kitchen').open()",
                             str(log_path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert second.returncode != 0 and "another guard is writing this audit log" in second.stderr
    first.close()
    third = AuditLog(log_path, "kitchen")
    third.open()  # free again once the first let go
    third.close()


def test_a_full_disk_takes_back_a_short_write_and_the_chain_holds(full_disk, capsys):
    path = full_disk / "audit.jsonl"
    log = AuditLog(path, "kitchen")
    log.record("wake", model="alexa", utterance="u1")
    before = path.read_bytes()
    fill(full_disk)
    with pytest.raises(AuditError, match="cannot write the audit log \\(the disk is full\\)"):
        log.record("pending", utterance="u1", reason="x" * 6000)  # the rest of its page fits, the rest does not
    assert path.read_bytes() == before, "no torn record left behind"
    (full_disk / "filler").unlink()
    log.record("discarded", utterance="u1", reason="timeout")
    log.close()
    code, verdict = _verify(path, capsys)
    assert code == 0 and verdict["records"] == 2 and verdict["crashes"] == []


def test_a_read_only_log_folder_is_a_problem_not_a_crash(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], check=True)
    try:
        log = AuditLog(folder / "audit.jsonl", "kitchen")
        log.open()
        assert "Read-only file system" in log.problem
        with pytest.raises(AuditError, match="Read-only file system"):
            log.record("wake")
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _rehashed(line: str, **changes) -> str:
    """A record with some fields changed and its own hash fixed, as a careful forger would write it."""
    record = {**json.loads(line), **changes}
    record["hash"] = audit._digest(audit._canonical(record))
    return json.dumps(record, separators=(",", ":"))


def test_a_verdict_counts_the_records_that_hold_before_the_first_bad_line(log_path, capsys):
    _edit(log_path, lambda ls: ls[:3] + [_rehashed(ls[3], score=0.5)] + ls[4:])
    code, verdict = _verify(log_path, capsys)
    assert (verdict["bad_line"], verdict["records"]) == (5, 4)
    assert verdict["reason"] == "does not follow line 4 (edited, deleted or reordered)"


def test_a_renumbered_record_is_named_for_its_sequence(log_path, capsys):
    _edit(log_path, lambda ls: ls[:1] + [_rehashed(ls[1], seq=3)] + ls[2:])
    code, verdict = _verify(log_path, capsys)
    assert verdict["bad_line"] == 2 and verdict["reason"].startswith("sequence number 3 where 2 was due")
    _edit(log_path, lambda ls: ls[:1] + [_rehashed(ls[1], seq=1)] + ls[2:])
    code, verdict = _verify(log_path, capsys)
    assert verdict["bad_line"] == 2 and verdict["reason"].startswith("sequence number 1 where 2 was due")


@pytest.mark.parametrize("value", ["sinkA", "sinkB", "sinkC", "sinkD", "sinkE", "sinkF", "sinkG", "sinkH"])
def test_a_forged_record_breaks_the_next_ones_link_whatever_it_says(log_path, capsys, value):
    """Eight forgeries: their digests fall on both sides of the true one, so no ordering slips through."""
    _edit(log_path, lambda ls: ls[:2] + [_rehashed(ls[2], sink=value)] + ls[3:])
    code, verdict = _verify(log_path, capsys)
    assert code == 1 and verdict["bad_line"] == 4


def test_a_json_object_that_is_not_a_record_is_named(log_path, capsys):
    _edit(log_path, lambda ls: ls[:2] + ['{"seq": 3, "event": "wake"}'] + ls[3:])
    code, verdict = _verify(log_path, capsys)
    assert verdict["bad_line"] == 3 and verdict["reason"] == "not an audit record"


@pytest.mark.parametrize("other", ["aaa", "zzz"])  # ids that sort before and after "kitchen"
def test_another_devices_log_is_refused_whatever_its_id(log_path, capsys, other):
    path = log_path.parent / f"{other}.jsonl"
    log = AuditLog(path, other)
    log.record("wake", utterance="u1")
    log.close()
    assert audit.verify(path, "kitchen").reason == f"written by device {other!r}, not 'kitchen' (another guard's log?)"


def _torn_and_sealed(log_path) -> None:
    with log_path.open("ab") as f:
        f.write(b'{"seq":6,"time":"2026-11-22T10:00:00.000+00:00","device":"kit')
    log = AuditLog(log_path, "kitchen")
    log.record("muted", by="button")
    log.record("unmuted", by="button")
    log.close()


@pytest.mark.parametrize(("field", "value"), [("event", "sealedx"), ("event", "muted"), ("torn_line", 5),
                                             ("torn_line", 7),
                                             ("torn_sha256", "0" * 64), ("torn_sha256", "f" * 64),
                                             ("prev", "0" * 64), ("prev", "f" * 64)])
def test_a_seal_that_does_not_match_its_torn_line_is_tampering(log_path, capsys, field, value):
    _torn_and_sealed(log_path)
    _edit(log_path, lambda ls: ls[:6] + [_rehashed(ls[6], **{field: value})] + ls[7:])
    code, verdict = _verify(log_path, capsys)
    assert code == 1 and verdict["bad_line"] == 6 and verdict["crashes"] == []


def test_tampering_after_a_crash_is_still_found(log_path, capsys):
    _torn_and_sealed(log_path)
    code, verdict = _verify(log_path, capsys)
    assert code == 0 and verdict["crashes"] == [6] and verdict["records"] == 8
    _edit(log_path, lambda ls: ls[:7] + [_rehashed(ls[7], by="remote")] + ls[8:])
    code, verdict = _verify(log_path, capsys)
    assert code == 1 and verdict["bad_line"] == 9 and verdict["crashes"] == [6] and verdict["records"] == 7


def test_a_long_log_with_a_crash_late_in_it_verifies(tmp_path, capsys):
    """Line numbers past 256, where Python stops sharing small integers."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "kitchen")
    for i in range(300):
        log.record("wiped", by="remote", n=i)
    log.close()
    with path.open("ab") as f:
        f.write(b'{"seq":301,"ti')
    log = AuditLog(path, "kitchen")
    log.record("muted", by="button")
    log.close()
    code, verdict = _verify(path, capsys)
    assert code == 0 and verdict["crashes"] == [301] and verdict["records"] == 302


def test_the_chain_starts_from_64_zeros_and_the_backlog_holds_1000(log_path):
    assert audit.read(log_path)[0]["prev"] == "0" * 64
    assert audit.BACKLOG_RECORDS == 1000  # as the README says


@pytest.mark.parametrize(("field", "value"), [("event", "discarded"), ("device", "attic"), ("confirmed_by", "voice"),
                                             ("duration_seconds", 9.9), ("utterance", "u9"), ("time", "2030")])
def test_every_field_is_covered_by_the_records_hash(log_path, capsys, field, value):
    def edit(lines):
        record = json.loads(lines[2])
        record[field] = value
        return lines[:2] + [json.dumps(record, separators=(",", ":"))] + lines[3:]
    _edit(log_path, edit)
    code, verdict = _verify(log_path, capsys)
    assert verdict["bad_line"] == 3 and verdict["reason"] == "its contents do not match its hash (edited)"


def test_an_empty_log_holds_no_records_and_is_intact(tmp_path):
    (tmp_path / "audit.jsonl").write_text("")
    verdict = audit.verify(tmp_path / "audit.jsonl")
    assert verdict.intact and verdict.records == 0


def test_a_damaged_line_is_shown_by_its_first_80_characters(log_path):
    _edit(log_path, lambda ls: ls[:1] + ["x" * 200] + ls[2:])
    assert audit.read(log_path)[1] == {"seq": 2, "damaged": "x" * 80}


def test_a_minimal_record_with_only_the_chain_fields_is_judged_by_its_hash(log_path, capsys):
    _edit(log_path, lambda ls: ls[:1] + ['{"seq":2,"prev":"x","hash":"y","event":"wake"}'] + ls[2:])
    code, verdict = _verify(log_path, capsys)
    assert verdict["bad_line"] == 2 and verdict["reason"] == "its contents do not match its hash (edited)"


def test_deferred_records_are_written_at_close_and_a_loss_is_counted_once(tmp_path, monkeypatch):
    monkeypatch.setattr(audit, "BACKLOG_RECORDS", 300)  # above the integers Python shares
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "kitchen")
    log.defer("muted", by="remote")
    log.close()
    assert [(r["event"], r["late"]) for r in audit.read(path)] == [("muted", True)]
    log = AuditLog(path, "kitchen")
    for i in range(305):
        log.defer("refused", reason=f"flood {i}")
    log.record("unmuted", by="remote")
    log.record("wiped", by="remote")
    log.close()
    events = [r["event"] for r in audit.read(path)]
    assert events == ["muted"] + ["refused"] * 300 + ["lost", "unmuted", "wiped"]


def test_a_forger_who_fixes_a_records_hash_is_named_by_the_line_after(log_path, capsys):
    _edit(log_path, lambda ls: ls[:2] + [_rehashed(ls[2], sink="elsewhere")] + ls[3:])
    code, verdict = _verify(log_path, capsys)
    assert verdict["bad_line"] == 4 and verdict["reason"] == "does not follow line 3 (edited, deleted or reordered)"


def test_the_log_folder_is_made_however_deep(tmp_path):
    log = AuditLog(tmp_path / "a" / "b" / "audit.jsonl", "kitchen")
    log.record("wake", utterance="u1")
    log.close()
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_a_torn_line_on_a_full_disk_waits_to_be_sealed_and_the_log_opens(full_disk):
    path = full_disk / "audit.jsonl"
    log = AuditLog(path, "kitchen")
    log.record("wake", utterance="u1")
    log.close()
    with path.open("ab") as f:
        f.write(b'{"seq":2,"ti')  # torn by a crash
    fill(full_disk)
    with path.open("ab", buffering=0) as f, contextlib.suppress(OSError):  # its own page, to the last byte
        while True:
            f.write(b"x")
    log = AuditLog(path, "kitchen")
    log.open()  # no exception: the guard starts and shows the problem
    assert "the disk is full" in log.problem and "a torn last line waits to be sealed" in log.problem
    (full_disk / "filler").unlink()
    log.record("muted", by="button")
    log.close()
    verdict = audit.verify(path, "kitchen")
    assert verdict.intact and verdict.crashes == (2,)


def test_a_file_system_that_cannot_reserve_still_takes_every_record(tmp_path, monkeypatch, caplog):
    """vfat or a FUSE mount may refuse FALLOC_FL_KEEP_SIZE: the log works as before and says so once."""
    def refuse(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    monkeypatch.setattr(audit, "_preallocate", refuse)
    log = AuditLog(tmp_path / "audit.jsonl", "kitchen")
    log.record("wake", utterance="u1")
    log.record("pending", utterance="u1")
    log.record_outcome("released", utterance="u1")
    log.close()
    assert [r["event"] for r in audit.read(tmp_path / "audit.jsonl")] == ["wake", "pending", "released"]
    assert sum("cannot reserve room for release outcomes" in r.message for r in caplog.records) == 1


def test_every_record_leaves_room_for_an_outcome_behind_it(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "kitchen")
    log.record("wake", utterance="u1")
    assert path.stat().st_blocks * 512 >= path.stat().st_size + audit.RESERVE_BYTES


def test_only_what_a_release_turned_out_to_be_may_spend_the_reserve(full_disk):
    log = AuditLog(full_disk / "audit.jsonl", "kitchen")
    log.record("releasing", utterance="u1")
    fill(full_disk)
    exhaust(log)
    with pytest.raises(AuditError, match="the disk is full"):
        log.record("wake", utterance="u2")
    log.record_outcome("released", utterance="u1")
    log.close()
    assert [r["event"] for r in audit.read(full_disk / "audit.jsonl") if r["event"] != "filler"] == [
        "releasing", "released"]
