"""The button first: how fast a mute takes effect, and how fast the audit log grows, while the network floods.

`guard run`'s daemon, in-process on a quiet WAV at real-time pace, with a real mosquitto, the Wyoming
satellite on loopback (allowed_hosts: 127.0.0.1) and a mock button. Conditions, interleaved round by round:

  none      nothing but the guard's own audio
  detect    the allowed hub says run-satellite, then sends `detect` as fast as a socket takes it
  mqtt      a client publishes commands (cancel, unmute, unknown, oversized) to guard/<id>/cmd/ as fast as paho
            can (not to cmd/mute: mutes have a connection of their own, and a flood of mutes only mutes)
  idle      1,000 connections held open, half from a stranger (127.0.0.2), half from the allowed host

In each, mutes alternate between the button (a long press: latency from the moment gpiozero reports it
held) and MQTT (from the publish of cmd/mute by a separate client); both end at the `muted` decision.
The button lifts each mute again. Also measured: the longest gap between watchdog pings (WatchdogSec 2 s
here: a ping is due every 1 s) and, with each flood running alone afterwards for --growth-seconds, how fast
`refused` records grow the audit log.

    .venv/bin/python bench/bench_flood.py [--rounds 3] [--mutes 20] [--growth-seconds 130]
"""

import argparse
import dataclasses
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import speech  # noqa: E402
from mqtt_broker import Broker, free_port  # noqa: E402

from guard import config, parts  # noqa: E402
from guard.assembly import assemble  # noqa: E402
from guard.daemon import RunOptions  # noqa: E402
from guard.vocabulary import State  # noqa: E402

DEVICE = "bench"
CONDITIONS = ("none", "detect", "mqtt", "idle")


class Flood:
    """One condition's load, started and stopped around its mutes."""

    def __init__(self, kind: str, satellite_port: int, broker_port: int) -> None:
        self.kind, self.satellite_port, self.broker_port = kind, satellite_port, broker_port
        self.stopping = threading.Event()
        self.sent = 0
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []

    def start(self) -> None:
        if self.kind == "detect":
            self._threads.append(threading.Thread(target=self._detect, daemon=True))
        elif self.kind == "mqtt":
            self._threads.append(threading.Thread(target=self._mqtt, daemon=True))
        elif self.kind == "idle":
            for i in range(1000):
                source = "127.0.0.2" if i % 2 else "127.0.0.1"
                self._sockets.append(socket.create_connection(("127.0.0.1", self.satellite_port), timeout=10,
                                                              source_address=(source, 0)))
        for thread in self._threads:
            thread.start()

    def _detect(self) -> None:
        with socket.create_connection(("127.0.0.1", self.satellite_port), timeout=10) as s:
            s.sendall(b'{"type": "run-satellite"}\n')
            burst = b'{"type": "detect", "data": {"names": ["alexa"]}}\n' * 200
            while not self.stopping.is_set():
                try:
                    s.sendall(burst)
                except OSError:
                    return
                self.sent += 200

    def _mqtt(self) -> None:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="flood")
        client.connect("127.0.0.1", self.broker_port)
        client.loop_start()
        messages = [(f"guard/{DEVICE}/cmd/cancel", b""), (f"guard/{DEVICE}/cmd/release", b""),
                    (f"guard/{DEVICE}/cmd/unmute", b"ON"), (f"guard/{DEVICE}/cmd/wipe", b"x" * 5000)]
        while not self.stopping.is_set():
            for topic, payload in messages:
                client.publish(topic, payload, qos=0)
            self.sent += len(messages)
            if self.sent % 400 == 0:
                time.sleep(0.001)  # let paho's thread drain its queue, so memory stays flat
        client.loop_stop()
        client.disconnect()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(10)
        for s in self._sockets:
            s.close()


class Rig:
    """The daemon, its muted events timed, a commanding MQTT client, and a notify socket."""

    def __init__(self, tmp: Path, broker_port: int) -> None:
        self.notify_path = tmp / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        self.pings: list[float] = []
        os.environ |= {"NOTIFY_SOCKET": str(self.notify_path), "WATCHDOG_USEC": "2000000"}
        wav = speech.write_wav(tmp / "quiet.wav", speech.silence(3600))
        self.satellite_port = free_port()
        base = config.Config()
        self.audit_path = tmp / "audit.jsonl"
        cfg = dataclasses.replace(
            base, device=config.DeviceConfig(DEVICE), wake=dataclasses.replace(base.wake, models=("alexa",)),
            gpio=dataclasses.replace(base.gpio, bounce_seconds=0.0, long_press_seconds=0.2),
            audit=config.AuditConfig(str(self.audit_path)),
            mqtt=config.MqttConfig(host="127.0.0.1", port=broker_port, discovery=False),
            wyoming=config.WyomingConfig(uri=f"tcp://127.0.0.1:{self.satellite_port}", zeroconf=False,
                                         allowed_hosts=("127.0.0.1",)))
        self.muted_at: list[float] = []
        self.held_at: list[float] = []
        self.daemon = assemble(cfg, RunOptions(str(wav), "mock", publish=self._event), parts.detector(cfg))
        posted = self.daemon.button._button.when_held  # gpiozero's own callback, timed, then posted as before

        def held() -> None:
            self.held_at.append(time.perf_counter())
            posted()
        self.daemon.button._button.when_held = held
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.commander = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="commander")
        self.commander.connect("127.0.0.1", broker_port)
        self.commander.loop_start()
        threading.Thread(target=self._listen, daemon=True).start()

    def _event(self, event) -> None:
        if event.kind == "muted":
            self.muted_at.append(time.perf_counter())

    def _listen(self) -> None:
        while True:
            try:
                if b"WATCHDOG=1" in self.notify.recv(4096):
                    self.pings.append(time.monotonic())
            except TimeoutError:
                continue
            except OSError:
                return

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not (self.daemon.mqtt.listening.is_set() and self.daemon.satellite._thread.is_alive()):
            if time.monotonic() > deadline:
                raise SystemExit("the guard did not come up")
            time.sleep(0.05)

    def _wait(self, condition, seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out; state {self.daemon.gate.state}")
            time.sleep(0.002)

    def _hold_button(self) -> None:
        pin = self.daemon.pin_factory.pin(self.daemon.config.gpio.button_pin)
        pin.drive_low()
        time.sleep(self.daemon.config.gpio.long_press_seconds + 0.15)
        pin.drive_high()

    def mute_by_button(self) -> float:
        count = len(self.muted_at)
        self._hold_button()
        self._wait(lambda: len(self.muted_at) > count)
        return self.muted_at[-1] - self.held_at[-1]

    def mute_by_mqtt(self) -> float:
        count = len(self.muted_at)
        sent = time.perf_counter()
        self.commander.publish(f"guard/{DEVICE}/cmd/mute", b"", qos=1)
        self._wait(lambda: len(self.muted_at) > count)
        return self.muted_at[-1] - sent

    def unmute(self) -> None:
        self._hold_button()
        self._wait(lambda: self.daemon.gate.state is State.IDLE)

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(30)
        self.commander.loop_stop()
        self.notify.close()


def refused_bytes(audit: Path, offset: int) -> int:
    """Bytes of `refused` records written after `offset`: what the flood, not the mutes themselves, added."""
    with audit.open("rb") as f:
        f.seek(offset)
        return sum(len(line) for line in f if b'"event":"refused"' in line)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all conditions (default 3)")
    parser.add_argument("--mutes", type=int, default=20, help="mutes per condition per round (default 20)")
    parser.add_argument("--growth-seconds", type=float, default=130.0,
                        help="how long each flood runs alone for the audit growth (default 130: two refusal "
                             "intervals and the counts they end with)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        tmp.chmod(0o700)
        broker = Broker(tmp / "broker").start()
        rig = Rig(tmp, broker.port)
        rig.start()
        latencies = {c: {"button": [], "mqtt": []} for c in CONDITIONS}
        growth = {c: [] for c in CONDITIONS}
        gaps = {c: [] for c in CONDITIONS}
        sent = {c: [] for c in CONDITIONS}
        try:
            for _ in range(args.rounds):
                for condition in CONDITIONS:
                    flood = Flood(condition, rig.satellite_port, broker.port)
                    flood.start()
                    time.sleep(2.0)  # the flood in full swing before the first mute
                    started, size = time.monotonic(), rig.audit_path.stat().st_size
                    for i in range(args.mutes):
                        mute = rig.mute_by_button if i % 2 == 0 else rig.mute_by_mqtt
                        latencies[condition]["button" if i % 2 == 0 else "mqtt"].append(mute())
                        rig.unmute()
                    elapsed = time.monotonic() - started
                    pings = [t for t in rig.pings if t >= started]
                    gaps[condition].append(max((b - a for a, b in zip(pings, pings[1:], strict=False)), default=0))
                    flood.stop()
                    sent[condition].append(flood.sent / elapsed)
                    time.sleep(1.0)
            for condition in CONDITIONS:  # growth needs whole refusal intervals: each flood alone, no mutes
                flood = Flood(condition, rig.satellite_port, broker.port)
                flood.start()
                started, size = time.monotonic(), rig.audit_path.stat().st_size
                time.sleep(args.growth_seconds)
                flood.stop()
                growth[condition].append(refused_bytes(rig.audit_path, size) / (time.monotonic() - started) * 60
                                         / 1024)
                time.sleep(1.0)
        finally:
            rig.stop()
            broker.stop()
        print(f"bench_flood: {args.rounds} rounds x {args.mutes} mutes per condition (half button, half MQTT), "
              f"conditions interleaved; watchdog due every 1.0 s")
        print("| condition | flood sent/s | mute p50 ms (button, MQTT) | mute p99 ms (button, MQTT) "
              f"| refusals in the audit log over {args.growth_seconds:g} s, KiB/min | longest watchdog gap s |")
        print("|---|---|---|---|---|---|")
        for c in CONDITIONS:
            b, m = latencies[c]["button"], latencies[c]["mqtt"]
            print(f"| {c} | {statistics.median(sent[c]):,.0f} | {1000 * percentile(b, 0.5):.1f}, "
                  f"{1000 * percentile(m, 0.5):.1f} | {1000 * percentile(b, 0.99):.1f}, "
                  f"{1000 * percentile(m, 0.99):.1f} | {growth[c][0]:.2f} | {max(gaps[c]):.2f} |")
        print(json.dumps({"latencies_ms": {c: {k: sorted(round(1000 * x, 2) for x in v)
                                               for k, v in latencies[c].items()} for c in CONDITIONS}}))


if __name__ == "__main__":
    main()
