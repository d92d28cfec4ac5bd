"""The `guard` command: one subcommand per verb, each `cmd_<verb>(args) -> int`.

Results go to stdout, diagnostics to stderr; failures are one line, `--debug`
adds the traceback. Nothing here touches audio beyond handing frames along.
"""

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from guard import __version__, audit, boards, config, confirm, confusables, demo, esphome, models, mqtt, parts, sinks
from guard.assembly import assemble
from guard.audio import list_devices
from guard.config import ENGINES
from guard.daemon import Daemon, RunOptions, serve
from guard.dsp import FRAME_SAMPLES, FRAME_SECONDS, RATE_HZ, level_dbfs
from guard.errors import ExitStatus, GuardError, UsageError
from guard.hardware import spi_problem, usb_ring_problem
from guard.process import forbid_core_dumps
from guard.progress import Progress
from guard.vocabulary import Event
from guard.wake import Detection, FeatureExtractor, WakeDetector
from guard.wav import WavSource

log = logging.getLogger("guard")

SCAN_TAIL_SECONDS = 1.0  # silence fed after a file so a wake word at its very end still fires


def scan_file(detector: WakeDetector, path: Path, progress: Progress | None = None) -> list[Detection]:
    """Every wake in one WAV file, as if it were streamed live from a fresh start."""
    source = WavSource(path)
    detector.wipe()
    found, minutes = [], source.format.duration_seconds / 60
    for count, frame in enumerate(source.frames()):
        found += detector.process(frame)
        if progress is not None and count % 64 == 0:
            progress.update(count * FRAME_SECONDS / 60, minutes, "min")
    silence = np.zeros(FRAME_SAMPLES, np.int16)
    for _ in range(math.ceil(SCAN_TAIL_SECONDS * RATE_HZ / FRAME_SAMPLES)):
        found += detector.process(silence)
    duration = source.format.duration_seconds
    detector.wipe()
    return [dataclasses.replace(d, end_seconds=min(d.end_seconds, duration)) for d in found]


def cmd_scan(args: argparse.Namespace) -> int:
    cfg, _ = config.load(args.config)
    detector = parts.detector(cfg, args.model, args.threshold, args.engine)
    status = ExitStatus.OK
    for name in args.files:
        try:
            with Progress(f"scanning {name}") as progress:
                detections = scan_file(detector, Path(name), progress)
        except GuardError as e:
            print(f"guard: error: {e}", file=sys.stderr)
            status = max(status, e.exit_status)
            continue
        for d in detections:
            if args.json:
                print(json.dumps({"file": name, "model": d.model, "score": round(d.score, 4),
                                  "end": round(d.end_seconds, 2)}), flush=True)
            else:
                print(f"{name}: {d.model} (score {d.score:.2f}) ending at {d.end_seconds:.2f} s", flush=True)
    return status



def _meter(dbfs: float, scores: dict[str, float]) -> str:
    bars = int(max(0.0, dbfs + 60) / 60 * 20)
    best = max(scores, key=scores.get)
    return f"\r[{'#' * bars:<20}] {dbfs:6.1f} dBFS  {best} {scores[best]:.2f} "


def _load(args: argparse.Namespace) -> tuple[config.Config, Path | None]:
    """The config, with this run's --device (for the verbs that open a microphone) in place of [audio] device."""
    cfg, path = config.load(args.config)
    if getattr(args, "device", None):
        cfg = dataclasses.replace(cfg, audio=dataclasses.replace(cfg.audio, device=args.device))
    return cfg, path


def _add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", metavar="INDEX|NAME",
                   help="microphone for this run: an index or part of a name from `guard devices` "
                        "(default: [audio] device, else the system default)")


def cmd_listen(args: argparse.Namespace) -> int:
    cfg, _ = _load(args)
    detector = parts.detector(cfg, args.model, args.threshold, args.engine)
    mic = parts.microphone(cfg.audio)
    show_meter = sys.stderr.isatty()
    print(f"listening on {mic.name} at {mic.rate_hz} Hz for {', '.join(w.name for w in detector.words)}; "
          "Ctrl-C stops", file=sys.stderr)
    limit = args.seconds * RATE_HZ / FRAME_SAMPLES if args.seconds else math.inf
    try:
        for count, frame in enumerate(mic.frames(), start=1):
            for d in detector.process(frame):
                print(f"{time.strftime('%H:%M:%S')} {d.model} (score {d.score:.2f})", flush=True)
            if show_meter:
                print(_meter(level_dbfs(frame), detector.scores()), end="", file=sys.stderr, flush=True)
            if count >= limit:
                break
    except KeyboardInterrupt:
        pass
    finally:
        mic.close()
        detector.wipe()
        if show_meter:
            print(file=sys.stderr)
    return ExitStatus.OK


def cmd_devices(args: argparse.Namespace) -> int:
    devices = list_devices(output=args.output)
    for d in devices:
        if args.json:
            print(d.to_json())
        else:
            rates = ", ".join(str(r) for r in d.rates_hz) or f"{d.default_rate_hz} only"
            print(f"{d.index:3}  {d.name}  ({d.channels} ch; mono int16 at {rates} Hz)")
            if d.board:
                config = boards.recognise(d.name, d.channels).config.replace("\n", "; ")
                print(f"     {d.board}: {config}")
    if not devices and not args.json:
        print("no output devices; plug in a speaker or check `aplay -l`" if args.output else
              "no input devices; plug in a microphone or check `arecord -l`", file=sys.stderr)
    return ExitStatus.OK


def _print_event(event: Event) -> None:
    print(json.dumps(event.to_dict()), flush=True)


def _report_sinks(daemon: Daemon) -> None:
    if not daemon.sinks:
        log.warning("no [sinks] configured: a confirmed utterance has nowhere to go and is wiped")
    for sink in daemon.sinks:
        problem = sink.problem()
        if problem:
            log.error("%s; releases to it will fail until fixed", problem)


def cmd_run(args: argparse.Namespace) -> int:
    cfg, path = _load(args)
    log.info("config: %s", path or "built-in defaults")
    if args.device and args.source == "mic":  # a microphone named by hand is checked now (exit 2 if absent);
        parts.microphone(cfg.audio).close()                     # the configured one is waited for, as a service must
    daemon = assemble(cfg, RunOptions(args.source, args.gpio, args.fast, publish=_print_event),
                    parts.detector(cfg))
    for part, status in daemon.health.items():
        log.info("%s: %s", part, status)
    _report_sinks(daemon)
    status = serve(daemon)
    if daemon.audio.failure:
        raise GuardError(f"the audio source failed ({daemon.audio.failure}); everything held was wiped. "
                         "Check the microphone (guard devices); under systemd the guard restarts by itself")
    return status


def cmd_status(args: argparse.Namespace) -> int:
    cfg, _ = config.load(args.config)
    if not cfg.mqtt.host:
        raise UsageError("no [mqtt] host configured; guard status reads the state from the broker")
    device_id = cfg.device.resolved_id()
    got = mqtt.read_status(cfg.mqtt, device_id)
    if "state" not in got:
        print(f"{device_id}: no state on {cfg.mqtt.host}:{cfg.mqtt.port} (never ran with this broker?)")
        return ExitStatus.FAILURE
    state = json.loads(got["state"])
    if args.json:
        print(json.dumps({"device": device_id, "availability": got.get("availability"), **state}))
    else:
        muted = f" by {state['muted_by']}" if state.get("muted_by") else ""
        print(f"{device_id}: {got.get('availability', 'unknown')}, {state['state']}{muted} since {state['since']}")
        for part, status in state.get("health", {}).items():
            print(f"  {part}: {status}")
    return ExitStatus.OK


def cmd_forget(args: argparse.Namespace) -> int:
    cfg, _ = config.load(args.config)
    if not cfg.mqtt.host:
        raise UsageError("no [mqtt] host configured; there is nothing on a broker to forget")
    device_id = cfg.device.resolved_id()
    cleared = mqtt.forget(cfg.mqtt, device_id, cfg.audit.resolved_path().parent / "mqtt-discovered")
    print(f"{device_id}: cleared {len(cleared)} retained topics on {cfg.mqtt.host}:{cfg.mqtt.port}; "
          "Home Assistant removes the device and its entities")
    return ExitStatus.OK


def cmd_esphome_key(args: argparse.Namespace) -> int:
    cfg, _ = config.load(args.config)
    path = cfg.esphome.resolved_key_file()
    key = esphome.write_key(path)
    print(key)
    print(f"written to {path} (mode 600). In Home Assistant: Settings > Devices & services > Add integration > "
          f"ESPHome, host: this Pi's address, port: {cfg.esphome.port or 6053}; paste the key above when it asks "
          "for the encryption key.", file=sys.stderr)
    return ExitStatus.OK


def cmd_demo(args: argparse.Namespace) -> int:
    return demo.run()


def _read_take(name: str) -> np.ndarray:
    frames = [f.copy() for f in WavSource(Path(name)).frames()]
    samples = np.concatenate(frames) if frames else np.zeros(0, np.int16)
    problem = confirm.take_problem(samples)
    if problem:
        raise confirm.EnrollError(f"{name}: {problem}")
    return samples


def _record_takes(cfg: config.Config, count: int, seconds: float) -> list[np.ndarray]:
    """Ask for each take on the terminal and record it from the microphone, retrying bad ones."""
    mic = parts.microphone(cfg.audio)
    takes: list[np.ndarray] = []
    try:
        while len(takes) < count:
            print(f"take {len(takes) + 1}/{count}: say your confirmation phrase now ({seconds:g} s)",
                  file=sys.stderr, flush=True)
            wanted = math.ceil(seconds * RATE_HZ / FRAME_SAMPLES)
            frames = [f.copy() for _, f in zip(range(wanted), mic.frames(), strict=False)]
            samples = np.concatenate(frames)
            problem = confirm.take_problem(samples)
            if problem:
                print(f"  that take is not usable: {problem}; again", file=sys.stderr, flush=True)
                samples.fill(0)
                continue
            print("  ok", file=sys.stderr, flush=True)
            takes.append(samples)
    finally:
        mic.close()
    return takes


def cmd_enroll(args: argparse.Namespace) -> int:
    cfg, _ = _load(args)
    path = cfg.confirm.resolved_path()
    if args.list:
        enrolment = confirm.Enrolment.load(path)
        print(f"{path}: {enrolment.phrase!r}, {len(enrolment.templates)} takes enrolled {enrolment.created}; "
              f"content threshold {enrolment.threshold:.3f} (takes within {enrolment.positive_max:.3f}, closest "
              f"confusable {enrolment.negative_min:.3f}: {enrolment.closest}); speaker threshold "
              f"{enrolment.speaker_threshold:.2f} (takes within {enrolment.speaker_positive_max:.2f}, nearest "
              f"synthetic voice {enrolment.speaker_negative_min:.2f}); "
              + (f"in a noisy room, floored threshold {enrolment.floored_threshold:.3f} (takes within "
                 f"{enrolment.floored_positive_max:.3f}, closest {enrolment.floored_negative_min:.3f})"
                 if enrolment.floored else "no floored takes: in a noisy room, press the button (enrol again)"))
        return ExitStatus.OK
    if args.remove:
        if not path.exists():
            raise UsageError(f"{path}: nothing enrolled")
        path.unlink()
        print(f"{path}: removed; spoken confirmation is off", file=sys.stderr)
        return ExitStatus.OK
    if args.what != "confirm":
        raise UsageError("say what to enrol: guard enroll confirm [--from A.wav B.wav C.wav]")
    if args.from_files and len(args.from_files) < confirm.MIN_TAKES:
        raise UsageError(f"--from needs at least {confirm.MIN_TAKES} takes, got {len(args.from_files)}")
    phrase = confusables.check_phrase(args.phrase if args.phrase is not None else _ask_phrase())
    samples = [_read_take(f) for f in args.from_files] if args.from_files else \
        _record_takes(cfg, args.takes, args.seconds)
    print(f"calibrating {phrase!r} against its partials, sound-alikes and other voices (about a minute)...",
          file=sys.stderr, flush=True)
    try:
        with Progress("calibrating") as progress:
            enrolment = confirm.calibrate(phrase, samples, FeatureExtractor(16), progress.update)
    finally:
        for s in samples:
            s.fill(0)
    enrolment.save(path)
    print(f"{path}: enrolled {phrase!r} from {len(samples)} takes; content threshold {enrolment.threshold:.3f} "
          f"(closest confusable {enrolment.negative_min:.3f}: {enrolment.closest}); speaker threshold "
          f"{enrolment.speaker_threshold:.2f}. Add \"voice\" to a sink's confirm list to use it.")
    return ExitStatus.OK


def _ask_phrase() -> str:
    """The phrase's words, asked on a terminal (scripts pass --phrase)."""
    if not sys.stdin.isatty():
        raise UsageError('say which phrase the takes hold: --phrase "okay then, send my request"')
    print("type your confirmation phrase, as you will say it (at least 4 syllables, not something you say "
          "anyway): ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline()


def cmd_audit(args: argparse.Namespace) -> int:
    cfg, _ = config.load(args.config)
    path = Path(args.path) if args.path else cfg.audit.resolved_path()
    if not path.exists():
        raise GuardError(f"{path}: no audit log here yet (nothing has been decided); set [audit] path if it moved")
    if args.verify:
        device = args.device or (None if args.path else cfg.device.resolved_id())
        verdict = audit.verify(path, device)
        crashes = (f"; line {', '.join(map(str, verdict.crashes))} torn by a crash (power loss, full disk) and "
                   "sealed at the next start" if verdict.crashes else "")
        if args.json:
            print(json.dumps({"file": str(path), "intact": verdict.intact, "records": verdict.records,
                              "bad_line": verdict.bad_line, "reason": verdict.reason,
                              "crashes": list(verdict.crashes)}))
        elif verdict.intact:
            print(f"{path}: {verdict.records} records, chain intact{crashes}")
        else:
            print(f"{path}: line {verdict.bad_line}: {verdict.reason}; {verdict.records} records before it hold")
        return ExitStatus.OK if verdict.intact else ExitStatus.FAILURE
    for record in audit.read(path):
        print(json.dumps(record) if args.json else audit.describe(record))
    return ExitStatus.OK


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg, path = config.load(args.path or args.config)
    problems = _run_time_problems(cfg)
    for problem in problems:
        print(f"guard: error: {problem}", file=sys.stderr)
    if problems:
        return ExitStatus.USAGE
    print(f"{path or 'built-in defaults'}: ok; device id {cfg.device.resolved_id()}", file=sys.stderr)
    print(config.to_toml(cfg), end="")
    return ExitStatus.OK


def _run_time_problems(cfg: config.Config) -> list[str]:
    """What `guard run` would trip over with this config: models, sink folders and programs, secret files, the
    ESPHome key, the APA102 LEDs' SPI device, the USB array's ring."""
    problems = []
    try:
        for name in cfg.wake.models:
            models.verify(models.resolve(name, parts.models_dir(cfg)))
    except GuardError as e:
        problems.append(str(e))
    problems += [p for p in (s.problem() for s in sinks.build(cfg.sinks, cfg.device.resolved_id())) if p]
    if cfg.mqtt.host and cfg.mqtt.password_file:
        try:
            mqtt.read_password(cfg.mqtt.password_file)
        except GuardError as e:
            problems.append(str(e))
    if cfg.esphome.port:
        try:
            esphome.read_key(cfg.esphome.resolved_key_file())
        except GuardError as e:
            problems.append(str(e))
    problems += [p for p in (spi_problem(cfg.gpio), usb_ring_problem(cfg.gpio)) if p]
    return problems


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", metavar="NAME|PATH",
                   help="wake-word model, repeatable: alexa, hey_jarvis, hey_mycroft, hey_marvin, "
                        "a stem in [wake] models_dir, or a path to .onnx (default: [wake] models)")
    p.add_argument("--engine", choices=ENGINES,
                   help="which models hear the wake words; auto: the evaluation's pick per word "
                        "(default: [wake] engine, auto)")
    p.add_argument("--threshold", type=_unit_interval, metavar="F",
                   help="score that counts as a wake (0-1, default: [wake] threshold, each model's own)")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _unit_interval(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is outside 0-1")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be above 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guard",
        description="On-device privacy guard: hears the wake word locally and lets audio leave "
                    "only after you confirm it on the device.",
        epilog="Config: --config PATH, else $GUARD_CONFIG, else /etc/guard/guard.toml, else built-in "
               "defaults. Exit codes: 0 ok, 1 runtime failure, 2 bad usage, config or input.")
    parser.add_argument("--version", action="version", version=f"guard {__version__}")
    parser.add_argument("--config", metavar="PATH", help="TOML config file (see guard.example.toml)")
    parser.add_argument("--debug", action="store_true", help="log per-frame detail and show tracebacks")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    for verb in _build_verbs(verbs):  # --config may also come after the verb: guard scan --config x.toml f.wav
        verb.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="TOML config file")
    return parser


def _build_verbs(verbs) -> list[argparse.ArgumentParser]:
    """Every verb's parser (config's own verbs included), so that options common to all can be added."""

    scan = verbs.add_parser("scan", help="find wake words in WAV files",
                            description="Find wake words in WAV files (any PCM or float format, rate "
                                        "and channel count; channels are mixed). Prints one line per "
                                        "detection; nothing when there is none.")
    scan.add_argument("files", nargs="+", metavar="FILE.wav")
    _add_model_flags(scan)
    scan.add_argument("--json", action="store_true",
                      help='one JSON object per line: {"file", "model", "score", "end": seconds into the file}')
    scan.set_defaults(func=cmd_scan)

    listen = verbs.add_parser("listen", help="detect wake words on the live microphone",
                              description="Detect wake words on the microphone from [audio] and print "
                                          "them, with a level meter on a terminal, until Ctrl-C. "
                                          "Nothing is recorded or sent.")
    _add_model_flags(listen)
    listen.add_argument("--seconds", type=_positive, metavar="S", help="stop after S seconds (default: never)")
    _add_device_flag(listen)
    listen.set_defaults(func=cmd_listen)

    devices = verbs.add_parser("devices", help="list microphones",
                               description="List capture devices with channels and the rates guard can "
                                           "open them at; put the index or part of the name in "
                                           "[audio] device (with --output: speakers, for [audio] output_device).")
    devices.add_argument("--json", action="store_true", help="one JSON object per device per line")
    devices.add_argument("--output", action="store_true", help="list playback devices instead of microphones")
    devices.set_defaults(func=cmd_devices)

    run = verbs.add_parser("run", help="the guard daemon",
                           description="Listen for the wake word, capture the request, show pending on "
                                       "the LED and release it to the [sinks] only on a button press "
                                       "while pending (or the enrolled phrase, for sinks that accept "
                                       "voice); everything else is wiped. Prints one JSON event "
                                       "per line; SIGTERM or Ctrl-C stop it cleanly.")
    run.add_argument("--source", default="mic", metavar="mic|FILE.wav",
                     help="the microphone from [audio] (default), or a WAV file played as if live; "
                          "after a file ends, an open pending window runs out and guard exits 0")
    run.add_argument("--gpio", choices=("auto", "mock", "none"), default="auto",
                     help="auto: the Pi's GPIO (default); mock: simulated pins; none: no button or LED "
                          "(nothing can be released)")
    _add_device_flag(run)
    run.add_argument("--fast", action="store_true",
                     help="with a file: play it as fast as possible, time measured in audio")
    run.set_defaults(func=cmd_run)

    demo_verb = verbs.add_parser("demo", help="the whole pipeline on bundled audio, no hardware needed",
                                 description="Plays two synthesized requests through the real detector and "
                                             "gate with simulated GPIO: the first is released after a "
                                             "simulated press into a temporary sink, the second is wiped when "
                                             "its window expires. Prints the events and the audit log.")
    demo_verb.set_defaults(func=cmd_demo)

    enroll = verbs.add_parser("enroll", help="enrol your spoken confirmation phrase",
                              description="Record your own confirmation phrase (at least 3 takes; each is "
                                          "checked for speech and clipping), or take WAV files, and store its "
                                          "templates (embeddings, never audio) in the state directory. A "
                                          'sink then accepts it with confirm = ["button", "voice"].')
    enroll.add_argument("what", nargs="?", choices=["confirm"], help="what to enrol: confirm")
    enroll.add_argument("--phrase", metavar="TEXT",
                        help="the phrase's words, e.g. \"okay then, send my request\" (asked when omitted); "
                             f"at least {confusables.MIN_SYLLABLES} syllables; calibration synthesizes its "
                             "partials and sound-alikes with espeak-ng")
    enroll.add_argument("--from", dest="from_files", nargs="+", metavar="WAV", help="takes from WAV files")
    enroll.add_argument("--takes", type=int, default=confirm.MIN_TAKES, metavar="N",
                        help=f"takes to record from the mic (default {confirm.MIN_TAKES})")
    enroll.add_argument("--seconds", type=_positive, default=3.5, metavar="S",
                        help="recording time per take (default 3.5)")
    _add_device_flag(enroll)
    enroll.add_argument("--list", action="store_true", help="show what is enrolled")
    enroll.add_argument("--remove", action="store_true", help="delete the enrolled phrase (voice consent off)")
    enroll.set_defaults(func=cmd_enroll)

    status = verbs.add_parser("status", help="the guard's state as its MQTT broker holds it",
                              description="Read the retained availability and state of this guard "
                                          "([device] id) from the broker in [mqtt].")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=cmd_status)

    forget = verbs.add_parser("forget", help="remove this guard's entities from Home Assistant",
                              description="Clear what this guard ([device] id) left retained on the broker in "
                                          "[mqtt]: its Home Assistant discovery configs (both styles), state and "
                                          "availability. Home Assistant then removes the device. Run it before "
                                          "retiring a guard; sudo ./install.sh --uninstall runs it for you. A "
                                          "guard still running announces itself again.")
    forget.set_defaults(func=cmd_forget)

    key = verbs.add_parser("esphome-key", help="make the key Home Assistant's ESPHome integration asks for",
                           description="Write a fresh 32-byte encryption key to [esphome] key_file (mode 600, "
                                       "never over an existing one) and print it for Home Assistant. Only a "
                                       "client holding it can talk to the guard's ESPHome API.")
    key.set_defaults(func=cmd_esphome_key)

    trail = verbs.add_parser("audit", help="show or verify the audit log",
                             description="Show the hash-chained log of every wake, release, discard and "
                                         "mute (metadata only, never audio), or verify that no line was "
                                         "edited, deleted or reordered.")
    trail.add_argument("--verify", action="store_true",
                       help="check the hash chain; exit 1 and name the first bad line if it is broken")
    trail.add_argument("--json", action="store_true", help="records (or the verdict) as one JSON object per line")
    trail.add_argument("--path", metavar="FILE", help="log file (default: [audit] path)")
    trail.add_argument("--device", metavar="ID",
                       help="with --verify: every record must carry this device id (default: this guard's "
                            "[device] id, unless --path names another file)")
    trail.set_defaults(func=cmd_audit)

    cfg = verbs.add_parser("config", help="check the config file")
    cfg_verbs = cfg.add_subparsers(dest="config_verb", metavar="ACTION", required=True)
    check = cfg_verbs.add_parser("check", help="validate a config and print the settings in effect")
    check.add_argument("path", nargs="?", metavar="PATH", help="file to check (default: the one guard would use)")
    check.set_defaults(func=cmd_config_check)
    return [*dict.fromkeys(verbs.choices.values()), *cfg_verbs.choices.values()]


class JournalFormatter(logging.Formatter):
    """journald adds timestamps itself; a `<N>` level prefix lets `journalctl -p` filter."""

    PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIORITIES.get(record.levelno, 6)}>{super().format(record)}"


def setup_logging(debug: bool) -> None:
    """Log to stderr; under systemd (JOURNAL_STREAM set) in journald's own format."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("guard")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug and sys.stdout.isatty() and sys.stderr.isatty():
        # on one terminal, each decision already shows as an event on stdout; the log line would repeat it
        logging.getLogger("guard.gate").setLevel(logging.WARNING)


def main(argv: Iterable[str] | None = None) -> int:
    """Run `guard`; returns the exit status instead of exiting."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:
        return int(e.code or 0)
    setup_logging(args.debug)
    forbid_core_dumps()
    try:
        return int(args.func(args))
    except GuardError as e:
        if args.debug:
            log.exception("failed")
        print(f"guard: error: {e}", file=sys.stderr)
        return int(e.exit_status)
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:  # `guard audit | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitStatus.OK
    except Exception as e:  # the outer edge: one line, not a traceback, unless asked
        if args.debug:
            log.exception("unexpected failure")
        print(f"guard: error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return ExitStatus.FAILURE


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())

