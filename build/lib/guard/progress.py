"""Progress of long work (a scan of hours of audio, enrolment) on one rewritten terminal line.

Shown only when stderr is a terminal, like pip and httpie: scripts and logs get
clean output. At most a few updates a second, and the line is cleared at the end.
"""

import sys
import time
from typing import TextIO

UPDATE_SECONDS = 0.25


class Progress:
    """`with Progress("scanning x.wav") as p: p.update(done, total, "min")` shows `scanning x.wav: 42% (25/60 min)`."""

    def __init__(self, what: str, stream: TextIO | None = None) -> None:
        self.what, self.stream = what, stream or sys.stderr
        self.shown = self.stream.isatty()
        self._last = 0.0

    def update(self, done: float, total: float, unit: str = "") -> None:
        now = time.monotonic()
        if not self.shown or now - self._last < UPDATE_SECONDS or total <= 0:
            return
        self._last = now
        percent = min(100, int(100 * done / total))
        self.stream.write(f"\r\033[K{self.what}: {percent}% ({done:.0f}/{total:.0f}{' ' + unit if unit else ''})")
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.shown and self._last:
            self.stream.write("\r\033[K")
            self.stream.flush()
