"""Refusals counted, not repeated: no network peer can make the log or the audit grow faster than a bound.

The first refusal of a kind from a peer is reported at once; the rest within the
interval are counted and reported as one line with the count when it ends. At most
`peers` distinct peers are told apart; beyond them all count as "others". So the
reports per interval are at most 2 x (peers + 1) x kinds, whatever is sent.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

INTERVAL_SECONDS = 60.0
PEERS = 16  # peers told apart; a stranger who changes address every time still lands in "others"


@dataclass
class _Tally:
    since: float
    reason: str
    count: int = 0  # refusals since `since` not yet reported


class RefusalTally:
    """Coalesces refusals per (peer, kind).

    Args:
        report: called with (peer, kind, reason, count, first): the first of an interval at once (count 1,
            first True), the rest of it as one count when it ends (first False). Called from the refusing
            thread, or from a timer thread for the counts; it must not raise.
        interval_seconds: how long one report covers.
        peers: how many peers are told apart.
    """

    def __init__(self, report: Callable[[str, str, str, int, bool], None], interval_seconds: float = INTERVAL_SECONDS,
                 peers: int = PEERS) -> None:
        self.report, self.interval_seconds, self.peers = report, interval_seconds, peers
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False

    def refused(self, peer: str, kind: str, reason: str) -> None:
        """One refusal: reported now if it is the first of its interval, else counted."""
        now = time.monotonic()
        with self._lock:
            known = {p for p, _ in self._tallies}
            if peer not in known and len(known - {"others"}) >= self.peers:
                peer = "others"
            tally = self._tallies.get((peer, kind))
            due = [] if tally is None else self._due_locked(now)
            if tally is None or now - tally.since >= self.interval_seconds:
                self._tallies[(peer, kind)] = _Tally(now, reason)
                first = True
            else:
                tally.count += 1
                tally.reason = reason
                first = False
                self._arm_locked(tally.since + self.interval_seconds - now)
        for args in due:
            self.report(*args, False)
        if first:
            self.report(peer, kind, reason, 1, True)

    def _due_locked(self, now: float) -> list[tuple[str, str, str, int]]:
        """Counts whose interval has ended, taken out of the tally; quiet peers are forgotten."""
        due = []
        for key, tally in list(self._tallies.items()):
            if now - tally.since >= self.interval_seconds:
                if tally.count:
                    due.append((*key, tally.reason, tally.count))
                del self._tallies[key]
        return due

    def _arm_locked(self, seconds: float) -> None:
        if self._timer is None and not self._closed:
            self._timer = threading.Timer(max(0.0, seconds) + 0.01, self.flush)
            self._timer.daemon = True
            self._timer.start()

    def flush(self, everything: bool = False) -> None:
        """Report the counts whose interval has ended (all of them when `everything`, as at exit)."""
        with self._lock:
            self._timer = None
            now = time.monotonic() + (self.interval_seconds if everything else 0.0)
            due = self._due_locked(now)
            pending = [t.since for t in self._tallies.values() if t.count]
            if pending:
                self._arm_locked(min(pending) + self.interval_seconds - time.monotonic())
        for args in due:
            self.report(*args, False)

    def close(self) -> None:
        """Report every count now and stop the timer."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
        self.flush(everything=True)
