"""systemd's notify protocol (READY, STATUS, WATCHDOG, STOPPING) over $NOTIFY_SOCKET; no libsystemd needed.

The watchdog is fed only while audio is flowing (or deliberately stopped, as
when muted), so a hung audio thread stops the pings and systemd restarts us.
"""

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Talks to systemd when run as a Type=notify service; does nothing otherwise.

    Args:
        environ: where NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are read from.
    """

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        for_us = environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid())
        self.watchdog_seconds = int(usec) / 1e6 if usec.isdigit() and for_us else 0.0
        self._last_ping = 0.0
        # opened once, at start: a peer that uses up the descriptors later cannot stop the watchdog's pings
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) \
            if self._address else None

    @property
    def active(self) -> bool:
        return bool(self._address)

    def send(self, *fields: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as e:
            log.warning("cannot notify systemd at %s: %s", self._address.lstrip("\0"), e)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self, healthy: bool) -> None:
        """Ping at half the watchdog interval, but only while healthy."""
        now = time.monotonic()
        if healthy and self.watchdog_seconds and now - self._last_ping >= self.watchdog_seconds / 2:
            self.send("WATCHDOG=1")
            self._last_ping = now
