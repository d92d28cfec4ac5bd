"""Soak: hours of audio through the real daemon with faults injected at random; nothing lost, nothing untrue.

The audio reaches the real PortAudio path through an ALSA `file` PCM whose
infile is a FIFO, faster than real time (the gate's time is audio time, as with
`guard run --fast`). Wakes ("Alexa" + a request in rotating espeak-ng voices)
come every 10-60 s of room noise; 70 % are confirmed with a button press
(gpiozero MockFactory), the rest time out. Released audio goes to a directory
sink and to an MQTT sink on a real mosquitto. At random audio times it injects:

- microphone errors (PortAudio's OSError, raised above alsa-lib, which cannot make one);
- broker restarts (mosquitto stopped for 1-3 audio minutes);
- a full audit disk (a real 2 MiB tmpfs filled for 2-5 audio minutes; needs root).

It then checks that events, audit records, sink files and MQTT audio match one
for one, and reports RSS growth per hour of audio and the longest gap between
watchdog pings (WATCHDOG_USEC = 2 s, so one ping a second when healthy).

    sudo .venv/bin/python bench/soak.py [--hours 2] [--seed 1]
"""

import argparse
import collections
import dataclasses
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import speech  # noqa: E402
from conftest import consent_window_open  # noqa: E402
from mqtt_broker import Broker, Subscriber  # noqa: E402

from guard import audio, audit, config, parts  # noqa: E402
from guard.assembly import assemble  # noqa: E402
from guard.daemon import Daemon, RunOptions  # noqa: E402
from guard.dsp import FRAME_SAMPLES, RATE_HZ  # noqa: E402
from guard.vocabulary import EventKind  # noqa: E402

DEVICE = "soak"
REQUESTS = ["what time is it", "turn on the kitchen light", "what is the weather tomorrow", "play some music",
            "set a timer for ten minutes", "add milk to the shopping list"]
CLOSING = ("discarded", "released", "release-failed", "release-unknown")


class Feed:
    """Writes the audio script into the FIFO the ALSA PCM reads; a reader that goes away (a dropped mic,
    PortAudio probing devices) loses what was in the pipe, as a real unplugged mic loses sound."""

    def __init__(self, fifo: Path, hours: float, rng: random.Random) -> None:
        self.fifo, self.rng, self.seconds = fifo, rng, hours * 3600
        voices = speech.VOICES
        self.wakes = [speech.say("Alexa", v) for v in voices]
        self.requests = [speech.say(r, voices[i % len(voices)]) for i, r in enumerate(REQUESTS)]
        self.written = 0.0
        self.done = threading.Event()

    def _chunks(self):
        noise = np.random.default_rng(self.rng.randrange(1 << 30))
        while self.written < self.seconds:
            gap = noise.normal(0, 25, int(RATE_HZ * self.rng.uniform(10, 60)))
            episode = [gap, self.rng.choice(self.wakes), np.zeros(4800), self.rng.choice(self.requests),
                       np.zeros(int(RATE_HZ * 1.6))]
            samples = np.clip(np.concatenate(episode), -32768, 32767).astype("<i2")
            for i in range(0, len(samples), FRAME_SAMPLES):
                yield samples[i:i + FRAME_SAMPLES].tobytes()

    def run(self) -> None:
        chunks = self._chunks()
        pending = b""
        while not self.done.is_set():
            try:
                with open(self.fifo, "wb") as f:
                    while True:
                        if not pending:
                            pending = next(chunks)
                        f.write(pending)
                        self.written += len(pending) / 2 / RATE_HZ
                        pending = b""
            except BrokenPipeError:
                pending = b""
            except StopIteration:
                self.done.set()


class Watchdog:
    """A NOTIFY_SOCKET of our own: records when each WATCHDOG=1 arrives."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.5)
        self.pings: list[float] = []
        os.environ.update(NOTIFY_SOCKET=str(path), WATCHDOG_USEC="2000000")
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        while True:
            try:
                if b"WATCHDOG=1" in self.sock.recv(4096):
                    self.pings.append(time.monotonic())
            except TimeoutError:
                continue
            except OSError:
                return

    def longest_gap(self) -> float:
        return float(np.max(np.diff(self.pings))) if len(self.pings) > 1 else float("inf")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Faults:
    """Injects faults at random audio times; counts what it did."""

    def __init__(self, rng: random.Random, hours: float, broker: Broker, audit_disk: Path | None) -> None:
        self.rng, self.broker, self.audit_disk = rng, broker, audit_disk
        self.mic_error = threading.Event()
        self.done = collections.Counter()
        span = hours * 3600
        self.plan = sorted([(rng.uniform(300, span - 300), "mic") for _ in range(max(1, int(hours * 5)))]
                           + [(rng.uniform(300, span - 300), "broker") for _ in range(max(1, int(hours * 3)))]
                           + ([(rng.uniform(300, span - 600), "disk") for _ in range(max(1, int(hours * 2)))]
                              if audit_disk else []))

    def run(self, clock, stop: threading.Event) -> None:
        for at, kind in self.plan:
            while clock() < at and not stop.is_set():
                time.sleep(0.05)
            if stop.is_set():
                return
            getattr(self, f"_{kind}")(clock, stop)
            self.done[kind] += 1

    def _mic(self, clock, stop) -> None:
        self.mic_error.set()

    def _broker(self, clock, stop) -> None:
        self.broker.stop()
        self._wait_audio(clock, stop, self.rng.uniform(60, 180))
        self.broker.start()

    def _disk(self, clock, stop) -> None:
        filler = self.audit_disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:  # full
            pass
        finally:
            os.close(fd)
        self._wait_audio(clock, stop, self.rng.uniform(120, 300))
        filler.unlink()

    @staticmethod
    def _wait_audio(clock, stop, seconds: float) -> None:
        until = clock() + seconds
        while clock() < until and not stop.is_set():
            time.sleep(0.05)


def flaky_microphone(faults: Faults) -> None:
    """PortAudio's error when a USB microphone is pulled out, raised whenever the fault plan says so."""
    real = audio.MicSource.frames

    def frames(self):
        for frame in real(self):
            if faults.mic_error.is_set():
                faults.mic_error.clear()
                raise OSError(-9999, "Unanticipated host error")
            yield frame
    audio.MicSource.frames = frames


class Refused(logging.Handler):
    """Counts what the full audit disk refused outright (a wake, a pending, a release: so it did not happen)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.kinds: collections.Counter = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.endswith(" refused") and "cannot write the audit log" in message:
            self.kinds[message.removesuffix(" refused").rsplit(" ", 1)[-1]] += 1


def soak_config(work: Path, port: int) -> config.Config:
    base = config.Config()
    return dataclasses.replace(
        base, device=config.DeviceConfig(DEVICE),
        audio=dataclasses.replace(base.audio, device="soaktest", zeros_fault_seconds=5.0),
        wake=dataclasses.replace(base.wake, models=("alexa",)),
        gpio=dataclasses.replace(base.gpio, bounce_seconds=0.0),
        audit=config.AuditConfig(str(work / "audit" / "audit.jsonl")),
        mqtt=dataclasses.replace(base.mqtt, host="127.0.0.1", port=port, reconnect_max_seconds=2, discovery=False),
        sinks={"files": config.SinkConfig(path=str(work / "released")),
               "hub": config.SinkConfig(type="mqtt", timeout_seconds=5)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=2.0, help="hours of audio (default 2)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="guard-soak-"))
    for d in ("home", "audit", "released", "broker"):
        (work / d).mkdir()
    fifo = work / "mic.fifo"
    os.mkfifo(fifo)
    (work / "home" / ".asoundrc").write_text(
        f'pcm.soaktest {{\n  type file\n  slave.pcm "null"\n  file "/dev/null"\n  infile "{fifo}"\n'
        f'  format "raw"\n}}\n')
    os.environ["HOME"] = str(work / "home")
    audit_disk = None
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(work / "audit")], check=True)
        audit_disk = work / "audit"
    else:
        print("not root: no full-disk faults (the audit tmpfs needs mount)")
    broker = Broker(work / "broker").start()
    hub = Subscriber(broker.port, [f"guard/{DEVICE}/audio/#"], client_id="soak-hub", persistent=True)
    hub.client.on_message = lambda c, u, m: hub.messages.append((m.topic, b"", m.retain))  # not the audio: RSS
    watchdog = Watchdog(work / "notify")
    refused = Refused()
    logging.basicConfig(level=logging.INFO, filename=work / "guard.log",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().addHandler(refused)

    feed = Feed(fifo, args.hours, rng)
    threading.Thread(target=feed.run, daemon=True).start()
    faults = Faults(rng, args.hours, broker, audit_disk)
    flaky_microphone(faults)
    events: list = []
    daemons: list[Daemon] = []

    def press_later() -> None:
        daemon = daemons[0]
        deadline = time.monotonic() + 5
        while not consent_window_open(daemon):
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)
        pin = daemon.pin_factory.pin(daemon.config.gpio.button_pin)
        pin.drive_low()
        pin.drive_high()

    def on_event(event) -> None:
        events.append(event)
        if event.kind is EventKind.PENDING and rng.random() < 0.7:
            threading.Thread(target=press_later, daemon=True).start()

    cfg = soak_config(work, broker.port)
    daemon = assemble(cfg, RunOptions("mic", "mock", fast=True, publish=on_event), parts.detector(cfg))
    daemons.append(daemon)
    loop = threading.Thread(target=daemon.run, name="loop")
    started, rss = time.monotonic(), []
    loop.start()
    stop_faults = threading.Event()
    threading.Thread(target=faults.run, args=(daemon.clock, stop_faults), daemon=True).start()
    while loop.is_alive() and not feed.done.is_set():
        rss.append((daemon.clock(), rss_mb()))
        time.sleep(3.0)
    time.sleep(1.0)  # the last 2 s in the pipe
    stop_faults.set()
    daemon.stop()
    loop.join(30)
    wall = time.monotonic() - started
    time.sleep(2)  # the hub's last messages
    report(work, cfg, events, refused, faults, watchdog, rss, daemon.clock(), wall, hub, loop.is_alive())
    hub.close()
    broker.stop()
    if audit_disk:
        subprocess.run(["umount", "--lazy", str(audit_disk)], check=False)


def report(work, cfg, events, refused, faults, watchdog, rss, audio_seconds, wall, hub, hung) -> None:
    records = audit.read(Path(cfg.audit.path))
    verdict = audit.verify(Path(cfg.audit.path), DEVICE)
    by_kind = collections.Counter(r["event"] for r in records)
    published = collections.Counter(e.kind for e in events)
    wakes = {r["utterance"] for r in records if r["event"] == "wake"}
    closed = {r["utterance"] for r in records if r["event"] in CLOSING}
    releasing = {r["utterance"] for r in records if r["event"] == "releasing"}
    released = {s: {r["utterance"] for r in records if r["event"] == "released" and r["sink"] == s}
                for s in ("files", "hub")}
    unknown_hub = {r["utterance"] for r in records if r["event"] == "release-unknown" and r["sink"] == "hub"}
    files = {p.stem.rsplit("-", 1)[-1] for p in (work / "released").glob("*.wav")}
    partial_files = list((work / "released").glob(".*"))
    heard = {t.rsplit("/", 1)[-1] for t in hub.topics()}
    mismatch = {k: published[k] - by_kind[k] for k in set(published) | set(by_kind) if published[k] != by_kind[k]}
    late = collections.Counter(r["event"] for r in records if r.get("late"))
    audio_hours = audio_seconds / 3600
    tail = [(s, m) for s, m in rss if s > 0.1 * audio_seconds]
    slope = np.polyfit([s / 3600 for s, _ in tail], [m for _, m in tail], 1)[0] if len(tail) > 2 else float("nan")
    rows = [
        ("audio", f"{audio_hours:.2f} h in {wall / 60:.1f} min wall"),
        ("faults injected", ", ".join(f"{k} x{n}" for k, n in sorted(faults.done.items())) or "none"),
        ("audit chain", f"intact, {verdict.records} records" if verdict.intact else f"BROKEN: {verdict}"),
        ("wakes / pending / releasing", f"{by_kind['wake']} / {by_kind['pending']} / {by_kind['releasing']}"),
        ("wakes without a closing record", str(len(wakes - closed))),
        ("released to files / files on disk / partial files",
         f"{len(released['files'])} / {len(files)} / {len(partial_files)}"),
        ("files without a releasing record, or without a released one", f"{len(files - releasing)}, "
         f"{len(files - released['files'])}"),
        ("released records without a file", str(len(released['files'] - files))),
        ("released to hub / audio messages heard by the hub", f"{len(released['hub'])} / {len(heard)}"),
        ("released to hub but never heard", str(len(released['hub'] - heard))),
        ("heard by the hub but not released (allowed only if release-unknown)",
         f"{len(heard - released['hub'])} (release-unknown: {len(unknown_hub)}, "
         f"unexplained: {len(heard - released['hub'] - unknown_hub)})"),
        ("release-failed / release-unknown records", f"{by_kind['release-failed']} / {by_kind['release-unknown']}"),
        ("faults / recovered records", f"{by_kind['fault']} / {by_kind['recovered']}"),
        ("events vs audit records", "one for one" if not mismatch else f"MISMATCH {mismatch}"),
        ("refused by the full disk, so never happened", ", ".join(f"{k} x{n}" for k, n in refused.kinds.items())
         or "none"),
        ("written late, once the disk had room", ", ".join(f"{k} x{n}" for k, n in late.items()) or "none"),
        ("RSS", f"{rss[0][1]:.1f} -> {rss[-1][1]:.1f} MB; growth {slope:+.2f} MB per hour of audio"),
        ("longest gap between watchdog pings", f"{watchdog.longest_gap():.2f} s ({len(watchdog.pings)} pings)"),
        ("loop still running after stop", "YES" if hung else "no"),
    ]
    print("| measure | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\nwork folder (log, audit): {work}")


if __name__ == "__main__":
    main()
