"""A real mosquitto on a free loopback port, and a subscriber that records what it hears."""

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto with a config of our own; `extra` adds lines (auth, TLS)."""

    def __init__(self, folder: Path, extra: str = "", persistence: bool = False) -> None:
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        listener = "" if "listener" in extra else f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        # as root, mosquitto would drop to its own user, who cannot read the test's private tmp files
        stay = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(stay + listener + extra.replace("PORT", str(self.port))
                             + f"persistence {'true' if persistence else 'false'}\n"
                             + f"persistence_location {folder}/\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Subscriber:
    """Records (topic, payload, retain) for everything under `topics`."""

    def __init__(self, port: int, topics: list[str], client_id: str = "", persistent: bool = False,
                 **connect) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not persistent)
        for key, value in connect.items():
            getattr(self.client, key)(*value)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_message = self.on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, message.retain))

    def topics(self) -> list[str]:
        with self._lock:
            return [m[0] for m in self.messages]

    def json(self, topic: str) -> list[dict]:
        with self._lock:
            return [json.loads(m[1]) for m in self.messages if m[0] == topic]

    def wait_for(self, condition, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.02)
        return condition()

    def publish(self, topic: str, payload, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
