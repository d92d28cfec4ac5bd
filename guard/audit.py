"""The hash-chained audit log: every decision on the record, metadata only, never audio.

One JSON object per line. Each record carries `prev`, the SHA-256 of the line
before it (64 zeros for the first), and `hash`, the SHA-256 of its own
canonical form, so an edited, deleted or reordered line breaks the chain that
`verify` walks. Records are fsynced before `record` returns; a write the disk
cuts short is taken back, so the file only ever holds whole records. A line
torn by a crash (no newline at the end of the file) is sealed at the next open
by a `sealed` record that skips it in the chain; `verify` reports it as a
crash, not as tampering. One guard at a time may write a log (an exclusive lock).
"""

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from guard.errors import AuditError
from guard.vocabulary import EventKind

log = logging.getLogger(__name__)

GENESIS = "0" * 64
FieldValue = str | int | float | bool | None
RESERVE_BYTES = 16384  # disk kept behind the last record, spent only by what a release turned out to be
FALLOC_FL_KEEP_SIZE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate64.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _preallocate(fd: int, offset: int, length: int) -> None:
    """Claim the disk blocks of [offset, offset + length) for the file without changing its size."""
    if _libc.fallocate64(fd, FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _check(fields: dict) -> None:
    """Only plain metadata goes on the record, never audio."""
    for key, value in fields.items():
        if not isinstance(value, FieldValue):
            raise TypeError(f"audit field {key!r} must be str, number, bool or None, not {type(value).__name__}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(record: dict) -> str:
    return json.dumps({k: v for k, v in record.items() if k != "hash"}, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class ChainVerdict:
    """What `verify` found: records that hold, the first bad line (1-based) if any, and lines torn by crashes."""

    records: int
    bad_line: int | None = None
    reason: str = ""
    crashes: tuple[int, ...] = ()

    @property
    def intact(self) -> bool:
        return self.bad_line is None


def _check_line(number: int, line: str, prev_line: str | None, device: str | None) -> str:
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
    if device is not None and record.get("device") != device:
        return f"written by device {record.get('device')!r}, not {device!r} (another guard's log?)"
    return ""


def _seals(number: int, lines: list[str], prev_line: str | None) -> bool:
    """True when line `number` is torn and the next line is the `sealed` record written for it at restart."""
    if number >= len(lines):
        return False
    try:
        seal = json.loads(lines[number])
    except json.JSONDecodeError:
        return False
    return isinstance(seal, dict) and seal.get("event") == EventKind.SEALED and seal.get("torn_line") == number \
        and seal.get("torn_sha256") == _digest(lines[number - 1]) \
        and seal.get("prev") == (GENESIS if prev_line is None else _digest(prev_line))


def verify(path: Path, device: str | None = None) -> ChainVerdict:
    """Walk the chain from the first line; stops at the first line that breaks it.

    Args:
        path: the log.
        device: if given, every record must carry this device id.
    """
    prev, crashes = None, []
    lines = path.read_text(errors="replace").splitlines()  # a last line cut short is still a line, judged as such
    for number, line in enumerate(lines, start=1):
        if _seals(number, lines, prev):
            crashes.append(number)  # the seal chains to `prev`, skipping this line
            continue
        reason = _check_line(number, line, prev, device)  # a seal takes the next number: seq = line number
        if reason:
            return ChainVerdict(number - 1 - len(crashes), number, reason, tuple(crashes))
        prev = line
    return ChainVerdict(len(lines) - len(crashes), crashes=tuple(crashes))


BACKLOG_RECORDS = 1000  # decisions held in RAM while the log cannot take them (full disk), written once it can


class AuditLog:
    """Appends decision records to a hash-chained JSON-lines file (mode 0600), one writer at a time.

        audit = AuditLog(Path("/var/lib/guard/audit.jsonl"), device_id="kitchen")
        audit.record(EventKind.WAKE, model="alexa", score=0.97)

    The file is opened, locked and (if a crash tore its last line) sealed by
    `open()` or the first `record`. A log that cannot be opened (read-only or
    full disk) does not stop the guard: `problem` says why, and every `record`
    tries again and raises AuditError while it fails, so the caller can refuse
    what needs a record. What happened anyway (a discard, a mute, a delivery's
    outcome) is kept with `defer` and written, marked late, before the next
    record that can be written. Every record but an outcome leaves RESERVE_BYTES
    of disk claimed behind it, so a delivered release always gets its record
    (`record_outcome`), even when the disk fills while the audio is on its way.

    Args:
        path: the log file; created with its folder (0700) if missing.
        device_id: written into every record.
    """

    def __init__(self, path: Path, device_id: str) -> None:
        self.path = path
        self.device_id = device_id
        self._lock = threading.Lock()  # the loop and the MQTT thread both record
        self._fd: int | None = None
        self._last_line: str | None = None
        self._seq = 0
        self._backlog: list[tuple[str, dict]] = []
        self._lost = 0  # deferred decisions beyond BACKLOG_RECORDS
        self.problem: str | None = None
        self.reserving = True  # False on a file system that cannot claim blocks ahead (then none is kept)

    def open(self) -> None:
        """Open, lock and seal the log now (the daemon does this before it says it is ready).

        Raises:
            AuditError: another process holds the log.
        """
        with self._lock:
            if self._fd is None:
                self._open()

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as e:
            self.problem = f"{self.path}: cannot open the audit log ({e.strerror})"
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AuditError(f"{self.path}: another guard is writing this audit log; stop it, or give this "
                             "one its own [audit] path") from None
        self._fd = fd
        try:
            self._last_line, self._seq = self._tail()
        except OSError as e:
            self._close_fd()
            self.problem = f"{self.path}: cannot seal a torn last line ({e.strerror})"
            return
        except AuditError as e:  # a full disk: the seal waits, the guard keeps guarding
            self._close_fd()
            self.problem = f"{e}; a torn last line waits to be sealed"
            return
        self.problem = None

    def _tail(self) -> tuple[str | None, int]:
        """The last whole line and its number, sealing a line torn by a crash first."""
        text = self.path.read_bytes().decode(errors="replace")
        lines = text.splitlines()
        if not text or text.endswith("\n"):
            return (lines[-1], len(lines)) if lines else (None, 0)
        torn, whole = lines[-1], lines[:-1]
        self._last_line, self._seq = (whole[-1] if whole else None), len(lines)
        self._write(b"\n")
        self._append(EventKind.SEALED, {"torn_line": len(lines), "torn_sha256": _digest(torn),
                                "reason": "a write was cut short (crash, power loss or full disk); sealed at start"},
                     prev_line=self._last_line)
        return self._last_line, self._seq

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also releases the lock
            self._fd = None

    def close(self) -> None:
        """Write what is still deferred, if the log can take it now, and let go of the file."""
        with self._lock:
            if self._backlog or self._lost:
                with contextlib.suppress(AuditError):
                    self._ready()
            self._close_fd()

    def defer(self, event: EventKind, **fields: FieldValue) -> None:
        """Keep a decision the log could not take; it is written, with `late` and its own time, ahead of the next
        record that succeeds."""
        with self._lock:
            if len(self._backlog) >= BACKLOG_RECORDS:
                self._lost += 1
                return
            decided = datetime.now(UTC).isoformat(timespec="milliseconds")
            self._backlog.append((event, {**fields, "late": True, "decided": decided}))

    def _ready(self) -> None:
        """Open the log if need be and write the deferred records, oldest first; AuditError if it cannot."""
        if self._fd is None:
            self._open()
            if self._fd is None:
                raise AuditError(self.problem)
        while self._backlog:
            event, fields = self._backlog[0]
            self._append(event, fields, prev_line=self._last_line)
            self._backlog.pop(0)
        if self._lost:
            self._append("lost", {"records": self._lost, "reason": f"more than {BACKLOG_RECORDS} decisions "
                                  "waited for the audit log; these were not kept"}, prev_line=self._last_line)
            self._lost = 0

    def record(self, event: EventKind, **fields: FieldValue) -> dict:
        """Append one record and fsync it. Only plain metadata is accepted, never audio.

        Raises:
            AuditError: the record could not be written whole; the file is as it was.
        """
        _check(fields)
        with self._lock:
            self._ready()
            return self._append(event, fields, prev_line=self._last_line)

    def record_outcome(self, event: EventKind, **fields: FieldValue) -> dict:
        """Record what a release turned out to be (released, failed, unknown): it may spend the reserve that
        every other record leaves, and does not wait behind deferred records the disk cannot take.

        Raises:
            AuditError: not even the reserve could take it.
        """
        _check(fields)
        with self._lock:
            with contextlib.suppress(AuditError):
                self._ready()
            if self._fd is None:
                raise AuditError(self.problem)
            return self._append(event, fields, prev_line=self._last_line, spend_reserve=True)

    def _append(self, event: EventKind, fields: dict, prev_line: str | None, spend_reserve: bool = False) -> dict:
        record = {"seq": self._seq + 1, "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                  "device": self.device_id, "event": event, **fields,
                  "prev": GENESIS if prev_line is None else _digest(prev_line)}
        record["hash"] = _digest(_canonical(record))
        line = json.dumps(record, separators=(",", ":"))
        data = (line + "\n").encode()
        if not spend_reserve:
            self._claim(len(data) + RESERVE_BYTES)
        self._write(data)
        self._last_line, self._seq = line, self._seq + 1
        return record

    def _claim(self, length: int) -> None:
        """Claim the disk for the next `length` bytes of the log, or raise AuditError: the disk is full."""
        if not self.reserving:
            return
        try:
            _preallocate(self._fd, os.fstat(self._fd).st_size, length)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise AuditError(f"{self.path}: cannot write the audit log (the disk is full)") from None
            self.reserving = False  # EOPNOTSUPP: records are written as before, without a reserve
            log.warning("%s: its file system cannot reserve room for release outcomes (%s); on a full disk a "
                        "release's outcome waits in memory", self.path, e.strerror)

    def _write(self, data: bytes) -> None:
        """Write all of `data` and fsync, or take back what got written and raise AuditError."""
        start = os.fstat(self._fd).st_size
        try:
            done = 0
            while done < len(data):
                done += os.write(self._fd, data[done:])
            os.fsync(self._fd)
        except OSError as e:
            with contextlib.suppress(OSError):  # if even this fails, the next open seals what is left
                os.ftruncate(self._fd, start)
            what = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
            raise AuditError(f"{self.path}: cannot write the audit log ({what})") from None


def describe(record: dict) -> str:
    """One record on one line, for a person reading `guard audit`."""
    if "damaged" in record:
        return f"{record['seq']:>5}  (damaged) {record['damaged']}"
    extra = " ".join(f"{k}={v}" for k, v in record.items()
                     if k not in ("seq", "time", "device", "event", "prev", "hash"))
    return f"{record['seq']:>5}  {record['time']}  {record['device']}  {record['event']:<10} {extra}".rstrip()


def read(path: Path) -> list[dict]:
    """All records, for display; damaged lines come back as {'seq': n, 'damaged': text}."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            records.append({"seq": number, "damaged": line[:80]})
    return records
