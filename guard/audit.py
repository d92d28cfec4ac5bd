"""The hash-chained audit log: every decision on the record, metadata only, never audio.

One JSON object per line. Each record carries `prev`, the SHA-256 of the line
before it (64 zeros for the first), and `hash`, the SHA-256 of its own
canonical form, so an edited, deleted or reordered line breaks the chain that
`verify` walks. Records are fsynced before `record` returns.
"""

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

GENESIS = "0" * 64
FieldValue = str | int | float | bool | None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(record: dict) -> str:
    return json.dumps({k: v for k, v in record.items() if k != "hash"}, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Verdict:
    """What `verify` found: how many records held, and the first bad line (1-based) if any."""

    records: int
    bad_line: int | None = None
    reason: str = ""

    @property
    def intact(self) -> bool:
        return self.bad_line is None


def _check_line(number: int, line: str, prev_line: str | None) -> str:
    """Why line `number` breaks the chain, or '' if it holds."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return "not a JSON record (edited or cut short)"
    if not isinstance(record, dict) or not {"seq", "prev", "hash", "event"} <= record.keys():
        return "not an audit record"
    if record["hash"] != _digest(_canonical(record)):
        return "its contents do not match its hash (edited)"
    if record["seq"] != number:
        return f"sequence number {record['seq']} where {number} was due (deleted or reordered)"
    expected = GENESIS if prev_line is None else _digest(prev_line)
    if record["prev"] != expected:
        return f"does not follow line {number - 1} (edited, deleted or reordered)"
    return ""


def verify(path: Path) -> Verdict:
    """Walk the chain from the first line; stops at the first line that breaks it."""
    text = path.read_text()
    if text and not text.endswith("\n"):
        text += "\n"  # a last line cut short still gets judged, as not JSON
    prev = None
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        reason = _check_line(number, line, prev)
        if reason:
            return Verdict(number - 1, number, reason)
        prev = line
    return Verdict(len(lines))


class AuditLog:
    """Appends decision records to a hash-chained JSON-lines file (mode 0600).

        audit = AuditLog(Path("/var/lib/guard/audit.jsonl"), device_id="kitchen")
        audit.record("wake", model="alexa", score=0.97)

    Args:
        path: the log file; created with its folder (0700) if missing.
        device_id: written into every record.
    """

    def __init__(self, path: Path, device_id: str) -> None:
        self.path = path
        self.device_id = device_id
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._last_line, self._seq = self._tail()
        self._lock = threading.Lock()  # the loop and the MQTT thread both record

    def _tail(self) -> tuple[str | None, int]:
        if not self.path.exists():
            return None, 0
        lines = self.path.read_text().splitlines()
        return (lines[-1], len(lines)) if lines else (None, 0)

    def record(self, event: str, **fields: FieldValue) -> dict:
        """Append one record and fsync it. Only plain metadata is accepted, never audio."""
        for key, value in fields.items():
            if not isinstance(value, FieldValue):
                raise TypeError(f"audit field {key!r} must be str, number, bool or None, not {type(value).__name__}")
        with self._lock:
            return self._append(event, fields)

    def _append(self, event: str, fields: dict) -> dict:
        record = {"seq": self._seq + 1, "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                  "device": self.device_id, "event": event, **fields,
                  "prev": GENESIS if self._last_line is None else _digest(self._last_line)}
        record["hash"] = _digest(_canonical(record))
        line = json.dumps(record, separators=(",", ":"))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._last_line, self._seq = line, self._seq + 1
        return record


def read(path: Path) -> list[dict]:
    """All records, for display; damaged lines come back as {'seq': n, 'damaged': text}."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            records.append({"seq": number, "damaged": line[:80]})
    return records
