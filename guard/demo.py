"""`guard demo`: the whole guard on bundled speech with simulated pins, in a few seconds.

Two requests play as if from the microphone; the first gets a press of the consent button (posted to the
loop's inbox as gpiozero's thread would post it), the second is left to time out. A temporary sink and audit
log show what left and what was recorded, and are deleted at the end.
"""

import dataclasses
import tempfile
from pathlib import Path

from guard import audit, config, parts
from guard.assembly import assemble
from guard.daemon import RunOptions, serve
from guard.errors import ExitStatus
from guard.inbox import ButtonMove, ButtonMoved
from guard.vocabulary import Event, EventKind

DEMO_WAV = Path(__file__).resolve().parent / "demo" / "two-requests.wav"
DEMO_WORDS = ("alexa", "hey_jarvis")  # the words the demo's speech says


def describe_event(event: Event) -> str:
    details = " ".join(f"{k}={v}" for k, v in event.to_dict().items() if k not in ("kind", "time", "state"))
    return f"  {event.kind:<10} -> {event.state:<9} {details}"


def demo_config(folder: Path) -> config.Config:
    """The defaults, with a sink and an audit log in `folder` and the demo's two wake words."""
    defaults = config.Config()
    return dataclasses.replace(
        defaults, device=config.DeviceConfig("demo"), audit=config.AuditConfig(str(folder / "audit.jsonl")),
        wake=dataclasses.replace(defaults.wake, models=DEMO_WORDS),
        gpio=dataclasses.replace(defaults.gpio, bounce_seconds=0.0),
        sinks={"demo": config.SinkConfig(path=str(folder / "sink"))})


def run() -> int:
    """Play the demo; OK when exactly the pressed request reached the sink and the audit chain is intact."""
    with tempfile.TemporaryDirectory(prefix="guard-demo-") as tmp:
        cfg = demo_config(Path(tmp))
        sink = Path(cfg.sinks["demo"].path)
        sink.mkdir(mode=0o700)
        pressed = []

        def on_event(event: Event) -> None:
            print(describe_event(event), flush=True)
            if event.kind is EventKind.PENDING and not pressed:
                pressed.append(event.utterance)
                print("  (the demo presses the button while the LED blinks)", flush=True)
                for move in (ButtonMove.DOWN, ButtonMove.UP):
                    daemon.inbox.post(ButtonMoved(move, daemon.clock()))
            elif event.kind is EventKind.PENDING:
                print(f"  (no press: the {cfg.gate.pending_timeout_seconds:g} s window runs out)", flush=True)

        print(f"guard demo: {DEMO_WAV.name} holds two requests; only the first gets a button press.\n")
        daemon = assemble(cfg, RunOptions(str(DEMO_WAV), "mock", fast=True, publish=on_event), parts.detector(cfg))
        serve(daemon)
        files = sorted(sink.iterdir())
        print(f"\nreleased to the sink ({sink}):")
        for f in files:
            print(f"  {f.name}  {f.stat().st_size} bytes")
        print("\naudit log:")
        for record in audit.read(daemon.audit.path):
            print(audit.describe(record))
        verdict = audit.verify(daemon.audit.path)
        print(f"\naudit chain: {verdict.records} records, {'intact' if verdict.intact else 'BROKEN'}")
        print("everything else was wiped; the temporary sink and log are deleted now.")
    return ExitStatus.OK if len(files) == 1 and verdict.intact else ExitStatus.FAILURE
