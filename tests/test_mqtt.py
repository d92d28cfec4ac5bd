"""MQTT against a real mosquitto: events, retained state, Last Will, discovery, commands, outages, auth, TLS."""

import contextlib
import dataclasses
import io
import json
import os
import signal
import subprocess
import threading
import time
import wave
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
import speech
from conftest import DEVICE, GUARD, alsa_home, consent_window_open, daemon_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mqtt_broker import Broker, Subscriber, free_port
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from guard import audit, config, mqtt
from guard.assembly import assemble
from guard.audit import AuditLog
from guard.commands import CommandError, parse_command
from guard.daemon import Daemon, RunOptions
from guard.errors import ConfigError
from guard.hermes import asr_session
from guard.mqtt import MqttLink
from guard.vocabulary import Event, State
from guard.wake import WakeDetector

ROOT = f"guard/{DEVICE}"


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def two_requests_wav(tmp_path_factory):
    audio = speech.two_requests("what time is it", "turn on the radio")
    return speech.write_wav(tmp_path_factory.mktemp("mqtt") / "two.wav", audio)


def _config(tmp_path, port: int, **mqtt) -> config.Config:
    return daemon_config(tmp_path, mqtt=config.MqttConfig(host="127.0.0.1", port=port, **mqtt))


def _daemon(cfg, source, fast=True, publish=lambda e: None) -> Daemon:
    detector = WakeDetector(cfg.wake.settings())
    return assemble(cfg, RunOptions(str(source), "mock", fast=fast, publish=publish), detector)


def _press_on_first_pending(cfg):
    """A publish hook that presses the mock button once, as soon as the LED shows the first pending utterance.

    The "pending" event is published before the LED changes (the record comes first), and a
    press before the LED shows pending never counts, so the press waits for the LED. Use it at
    real-time pace (fast=False): a person's press takes wall-clock time, and a --fast file runs 3 s
    of audio in a few milliseconds, so a press there may land after the next wake word was passed by.
    """
    pressed, daemons = [], []

    def press_once_the_led_shows_pending() -> None:
        deadline = time.monotonic() + 5
        while not consent_window_open(daemons[0]) and time.monotonic() < deadline:
            time.sleep(0.005)
        pin = daemons[0].pin_factory.pin(cfg.gpio.button_pin)
        pin.drive_low()
        pin.drive_high()

    def hook(event: Event) -> None:
        if event.kind == "pending" and not pressed:
            pressed.append(event.utterance)
            threading.Thread(target=press_once_the_led_shows_pending, daemon=True).start()
    return hook, pressed, daemons


def _start(daemon: Daemon) -> threading.Thread:
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    return thread


def _events(sub: Subscriber) -> list[str]:
    return [t.rsplit("/", 1)[1] for t in sub.topics() if t.startswith(f"{ROOT}/event/")]


def test_released_and_discarded_utterances_reach_the_hub_in_order(tmp_path, broker, two_requests_wav):
    sub = Subscriber(broker.port, [f"{ROOT}/#"])
    cfg = _config(tmp_path, broker.port)
    cfg = dataclasses.replace(cfg, gate=dataclasses.replace(cfg.gate, pending_timeout_seconds=4.0))
    press_first, pressed, daemons = _press_on_first_pending(cfg)
    daemon = _daemon(cfg, two_requests_wav, fast=False, publish=press_first)
    daemons.append(daemon)
    _start(daemon).join(40)
    expected = ["wake", "pending", "releasing", "released", "wake", "pending", "discarded"]
    assert sub.wait_for(lambda: _events(sub) == expected), _events(sub)
    events = [json.loads(m[1]) for m in sub.messages if m[0].startswith(f"{ROOT}/event/")]
    assert events[2]["utterance"] == pressed[0] and events[2]["confirmed_by"] == "button"
    assert events[3]["utterance"] == pressed[0] and events[3]["sink"] == "box"
    assert events[6]["reason"] == "timeout"
    assert all("audio" not in e and "samples" not in e for e in events)
    assert [a["event_type"] for a in sub.json(f"{ROOT}/activity")] == [
        "wake_detected", "pending", "released", "wake_detected", "pending", "discarded"]
    assert sub.wait_for(lambda: (f"{ROOT}/availability", b"offline", False) in sub.messages)
    sub.close()
    late = Subscriber(broker.port, [f"{ROOT}/state", f"{ROOT}/availability"])
    assert late.wait_for(lambda: len(late.messages) == 2)
    retained = {t: (p, r) for t, p, r in late.messages}
    assert retained[f"{ROOT}/availability"] == (b"offline", True)
    state, was_retained = retained[f"{ROOT}/state"]
    assert was_retained and json.loads(state)["state"] == "idle"
    assert json.loads(state)["last_wake"]["model"] == "alexa", "the last wake is retained for a restarted hub"
    late.close()


def test_last_will_says_offline_when_the_daemon_is_killed(tmp_path, broker, quiet_wav):
    home = tmp_path / "home"
    (tmp_path / "guard.toml").write_text(
        f'[device]\nid = "{DEVICE}"\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nkeepalive_seconds = 2\n'
        f'[audit]\npath = "{tmp_path / "audit.jsonl"}"\n')
    env = {**alsa_home(home, tmp_path / "none.raw"), "GUARD_CONFIG": str(tmp_path / "guard.toml")}
    sub = Subscriber(broker.port, [f"{ROOT}/availability", f"{ROOT}/state"])
    proc = subprocess.Popen([str(GUARD), "run", "--source", str(quiet_wav), "--gpio", "mock"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert sub.wait_for(lambda: (f"{ROOT}/availability", b"online", False) in sub.messages, 20)
        assert sub.wait_for(lambda: f"{ROOT}/state" in sub.topics(), 10)  # state follows availability
        state = [json.loads(p) for t, p, _ in sub.messages if t == f"{ROOT}/state"][-1]
        assert state["state"] == "idle" and state["muted_by"] is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        assert sub.wait_for(lambda: (f"{ROOT}/availability", b"offline", False) in sub.messages, 10)
    finally:
        proc.kill()
        sub.close()


def test_discovery_is_consistent_and_republished_when_home_assistant_returns(tmp_path, broker, quiet_wav):
    sub = Subscriber(broker.port, ["homeassistant/#"])
    daemon = _daemon(_config(tmp_path, broker.port), quiet_wav, fast=False)
    thread = _start(daemon)
    try:
        assert sub.wait_for(lambda: len(sub.messages) >= 10)
        configs = {t: json.loads(p) for t, p, _ in sub.messages if t.endswith("/config")}
        components = {t.split("/")[1] for t in configs}
        assert components == {"binary_sensor", "switch", "button", "event", "sensor"}
        for topic, c in configs.items():
            assert "object_id" not in c, "HA 2026.4 ignores object_id"
            assert c["default_entity_id"] == f"{topic.split('/')[1]}.{c['unique_id']}"
            assert c["origin"]["name"] == "pi-guard"
        problem, = [c for c in configs.values() if c.get("device_class") == "problem"]
        assert problem["state_topic"] == f"{ROOT}/state"
        wake_sensors = [c for c in configs.values() if "last_wake" in c.get("value_template", "")]
        assert len(wake_sensors) == 2 and all(c["state_topic"] == f"{ROOT}/state" for c in wake_sensors), \
            "read from the retained state: they survive a Home Assistant restart"
        ids = [c["unique_id"] for c in configs.values()]
        assert len(ids) == len(set(ids)) == len(configs)
        ours = {f"{ROOT}/state", f"{ROOT}/activity"} | {f"{ROOT}/cmd/{v}" for v in ("remote_mute", "cancel", "wipe")}
        for c in configs.values():
            assert c["availability_topic"] == f"{ROOT}/availability"
            assert c["device"]["identifiers"] == [f"guard_{DEVICE}"]
            for key in ("state_topic", "command_topic"):
                if key in c:
                    assert c[key] in ours
        assert not any("release" in t for t in configs), "no entity can release audio"
        count = len(sub.messages)
        sub.publish("homeassistant/status", "online")
        assert sub.wait_for(lambda: len(sub.messages) >= count + len(configs))
    finally:
        daemon.stop()
        thread.join(10)
        sub.close()


def _hold_button(daemon: Daemon, cfg, until) -> None:
    pin = daemon.pin_factory.pin(cfg.gpio.button_pin)
    pin.drive_low()
    deadline = time.monotonic() + 5
    while not until() and time.monotonic() < deadline:
        time.sleep(0.02)
    pin.drive_high()


def test_remote_unmute_does_not_lift_a_button_mute(tmp_path, broker, quiet_wav):
    cfg = _config(tmp_path, broker.port)
    sub = Subscriber(broker.port, [f"{ROOT}/#"])
    daemon = _daemon(cfg, quiet_wav, fast=False)
    thread = _start(daemon)
    try:
        assert sub.wait_for(lambda: daemon.mqtt.listening.is_set())
        _hold_button(daemon, cfg, lambda: daemon.gate.state is State.MUTED)
        assert daemon.gate.muted_by == "button"
        sub.publish(f"{ROOT}/cmd/unmute", "")
        sub.publish(f"{ROOT}/cmd/remote_mute", "OFF")
        assert sub.wait_for(lambda: _events(sub).count("refused") == 2)
        assert daemon.gate.state is State.MUTED
        state = sub.json(f"{ROOT}/state")[-1]
        assert state["state"] == "muted" and state["muted_by"] == "button"
        _hold_button(daemon, cfg, lambda: daemon.gate.state is State.IDLE)
        sub.publish(f"{ROOT}/cmd/mute", "")
        assert sub.wait_for(lambda: daemon.gate.state is State.MUTED and daemon.gate.muted_by == "remote")
        sub.publish(f"{ROOT}/cmd/unmute", "")
        assert sub.wait_for(lambda: daemon.gate.state is State.IDLE)
    finally:
        daemon.stop()
        thread.join(10)
        sub.close()


def test_cancel_wipes_a_pending_utterance(tmp_path, broker, two_requests_wav):
    cfg = dataclasses.replace(_config(tmp_path, broker.port), gate=config.GateConfig(pending_timeout_seconds=60))
    sub = Subscriber(broker.port, [f"{ROOT}/#"])
    daemon = _daemon(cfg, two_requests_wav, fast=False)
    thread = _start(daemon)
    try:
        assert sub.wait_for(lambda: "pending" in _events(sub), 20)
        assert not daemon.gate.held.is_wiped()
        sub.publish(f"{ROOT}/cmd/cancel", "PRESS")
        assert sub.wait_for(lambda: "discarded" in _events(sub))
        assert sub.json(f"{ROOT}/event/discarded")[0]["reason"] == "cancelled by remote"
        assert daemon.gate.state is not State.PENDING
        assert list((tmp_path / "sink").iterdir()) == []
    finally:
        daemon.stop()
        thread.join(10)
        sub.close()
    assert daemon.gate.held.is_wiped()


def _numbered(link: MqttLink, first: int, count: int) -> None:
    for n in range(first, first + count):
        link.event(Event("wake", "capturing", "t", utterance=f"u{n:03}", model="alexa", score=0.9))


def _received(sub: Subscriber) -> list[str]:
    return list(dict.fromkeys(e["utterance"] for e in sub.json(f"{ROOT}/event/wake")))


def test_no_event_lost_when_the_broker_starts_late_or_restarts(tmp_path):
    broker = Broker(tmp_path / "broker", persistence=True).start()
    sub = Subscriber(broker.port, [f"{ROOT}/event/#"], client_id="hub", persistent=True)
    assert sub.wait_for(lambda: sub.client.is_connected())
    time.sleep(0.3)
    broker.stop()
    link = MqttLink(config.MqttConfig(host="127.0.0.1", port=broker.port, reconnect_max_seconds=1), DEVICE,
                    lambda verb: None, AuditLog(tmp_path / "audit.jsonl", DEVICE))
    link.start()
    try:
        _numbered(link, 1, 20)  # the broker is down: these wait in the outbox
        broker.start()
        assert sub.wait_for(lambda: len(_received(sub)) == 20, 20), _received(sub)
        assert _received(sub) == [f"u{n:03}" for n in range(1, 21)]
        broker.stop()  # a restart in the middle of a run
        _numbered(link, 21, 10)
        broker.start()
        assert sub.wait_for(lambda: len(_received(sub)) == 30, 20), _received(sub)
        assert _received(sub) == [f"u{n:03}" for n in range(1, 31)]
    finally:
        link.stop(0.5)
        sub.close()
        broker.stop()


def test_outbox_overflow_is_counted_in_the_audit_log(tmp_path):
    broker = Broker(tmp_path / "broker")
    log_path = tmp_path / "audit.jsonl"
    link = MqttLink(config.MqttConfig(host="127.0.0.1", port=broker.port, outbox_events=10,
                                      reconnect_max_seconds=1), DEVICE, lambda verb: None, AuditLog(log_path, DEVICE))
    link.start()
    try:
        def drops() -> list[dict]:
            return [r for r in audit.read(log_path) if r["event"] == "events_dropped"] if log_path.exists() else []

        _numbered(link, 1, 15)
        assert drops(), "the first drop is on the record while the broker is still away"
        broker.start()
        sub = Subscriber(broker.port, [f"{ROOT}/event/#"])
        assert link.connected.wait(10)
        assert sub.wait_for(lambda: sum(r["count"] for r in drops()) == 15 * 2 - 10)  # wake + activity each
        assert sub.wait_for(lambda: link.undelivered() == 0), "the ten kept messages were delivered"
        sub.close()
    finally:
        link.stop(0.5)
        broker.stop()


@given(topic=st.one_of(st.text(max_size=60).map(lambda t: f"{ROOT}/cmd/{t}"), st.text(max_size=80),
                       st.sampled_from([f"{ROOT}/cmd/mute", f"{ROOT}/cmd/remote_mute", "hermes/hotword/toggleOn",
                                        "hermes/hotword/toggleOff", f"{ROOT}/cmd/release", f"{ROOT}/cmd/sink"])),
       payload=st.binary(max_size=2048))
@settings(max_examples=400, deadline=None)
def test_any_inbound_message_is_a_documented_verb_or_refused(topic, payload):
    try:
        command = parse_command(topic, payload, DEVICE)
    except CommandError:
        return
    assert command is None or (command[0] in ("remote", "rhasspy")
                               and command[1] in ("mute", "unmute", "cancel", "wipe"))  # the README's list


# what mosquitto accepts in a topic: no wildcards, no control characters, valid UTF-8 (else it drops the client)
TOPIC_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="#+\x00"), max_size=30)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(st.tuples(TOPIC_TEXT, st.binary(max_size=300)), min_size=1, max_size=30))
def test_arbitrary_commands_never_release_and_never_stall(hypo_rig, messages):
    """Whatever arrives on cmd/#, the gate only ever mutes, unmutes, cancels or wipes."""
    sub, daemon = hypo_rig
    start = len(sub.messages)
    for suffix, payload in messages:
        sub.client.publish(f"{ROOT}/cmd/{suffix}", payload, qos=1)
    sub.publish(f"{ROOT}/cmd/wipe", "")  # a marker: once it is handled, everything before it was
    assert sub.wait_for(lambda: any(t == f"{ROOT}/event/wiped" for t in sub.topics()[start:]), 10)
    assert daemon.thread.is_alive()
    kinds = set(_events(sub))
    assert "released" not in kinds
    assert kinds <= {"muted", "unmuted", "refused", "discarded", "wiped", "error", "wake", "pending"}
    assert list(daemon.sink_dir.iterdir()) == []


@pytest.fixture(scope="module")
def hypo_rig(tmp_path_factory, quiet_wav):
    tmp = tmp_path_factory.mktemp("hypo")
    broker = Broker(tmp / "broker").start()
    cfg = _config(tmp, broker.port)
    sub = Subscriber(broker.port, [f"{ROOT}/#"])
    daemon = _daemon(cfg, quiet_wav, fast=False)
    daemon.sink_dir = tmp / "sink"
    daemon.thread = _start(daemon)
    assert sub.wait_for(lambda: daemon.mqtt.listening.is_set())
    yield sub, daemon
    daemon.stop()
    daemon.thread.join(10)
    sub.close()
    broker.stop()


def test_password_auth_and_a_private_password_file(tmp_path, quiet_wav):
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "guard-kitchen", "s3cret"], check=True,
                   capture_output=True)
    os.chmod(passwords, 0o644)
    broker = Broker(tmp_path / "broker", extra=f"listener PORT 127.0.0.1\nallow_anonymous false\n"
                                               f"password_file {passwords}\n").start()
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o644)
    try:
        with pytest.raises(ConfigError, match="readable by group or others; run: chmod 600"):
            _daemon(_config(tmp_path, broker.port, username="guard-kitchen", password_file=str(secret)), quiet_wav)
        os.chmod(secret, 0o600)
        daemon = _daemon(_config(tmp_path, broker.port, username="guard-kitchen", password_file=str(secret)),
                         quiet_wav, fast=False)
        thread = _start(daemon)
        assert daemon.mqtt.connected.wait(10)
        daemon.stop()
        thread.join(10)
    finally:
        broker.stop()


def test_the_guard_listens_only_once_the_broker_granted_both_connections_subscriptions(caplog):
    """A command published before the broker acknowledged the subscription is lost: `listening` (what a hub or a
    test waits for) waits for both SUBACKs, and a refused one (a broker ACL) is named in the log. Driven through
    the callbacks paho calls, with paho's own reason codes."""
    link = MqttLink(config.MqttConfig(host="127.0.0.1", port=free_port()), DEVICE, lambda by, verb: None, None)
    granted, refused = ReasonCode(PacketTypes.SUBACK, identifier=1), ReasonCode(PacketTypes.SUBACK, identifier=0x80)
    link.client.on_subscribe(link.client, None, 1, [granted, granted], None)
    assert not link.listening.is_set(), "the mute connection has not subscribed yet"
    link.mute_client.on_subscribe(link.mute_client, None, 1, [granted], None)
    assert link.listening.is_set()
    link.mute_client.on_disconnect(link.mute_client, None, None, ReasonCode(PacketTypes.DISCONNECT), None)
    assert not link.listening.is_set(), "a lost connection hears nothing until it subscribed again"
    link.mute_client.on_subscribe(link.mute_client, None, 2, [granted, refused], None)
    assert not link.listening.is_set()
    assert "refused a subscription (Unspecified error): remote commands cannot reach the guard" in caplog.text


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def test_a_missing_tls_file_is_one_config_error_for_the_daemon_and_for_guard_status(tmp_path):
    """Every client is built by one function: `guard status` and `guard forget` name the bad file and the keys
    to fix, as `guard run` does, instead of paho's traceback."""
    settings = config.MqttConfig(host="127.0.0.1", tls=True, ca_file=str(tmp_path / "nowhere.pem"))
    expected = r"^\[mqtt\] ca_file = '.*/nowhere\.pem': cannot be read \(No such file or directory\); fix the path"
    with pytest.raises(ConfigError, match=expected):
        MqttLink(settings, DEVICE, lambda by, verb: None, None)
    with pytest.raises(ConfigError, match=expected):
        mqtt.read_status(settings, DEVICE)
    with pytest.raises(ConfigError, match=expected):
        mqtt.forget(settings, DEVICE, None)


def test_tls_with_a_test_ca(tmp_path, quiet_wav):
    ca_key, ca, key, csr, cert, ext = (tmp_path / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem",
                                                                "ext.cnf"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
             "-subj", "/CN=guard test CA")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext))
    broker = Broker(tmp_path / "broker", extra=f"listener PORT 127.0.0.1\nallow_anonymous true\ncafile {ca}\n"
                                               f"certfile {cert}\nkeyfile {key}\n").start()
    try:
        daemon = _daemon(_config(tmp_path, broker.port, tls=True, ca_file=str(ca)), quiet_wav, fast=False)
        thread = _start(daemon)
        assert daemon.mqtt.connected.wait(10)
        daemon.stop()
        thread.join(10)
        plain = _daemon(_config(tmp_path, broker.port), quiet_wav, fast=False)
        thread = _start(plain)
        assert not plain.mqtt.connected.wait(2), "a plain connection to a TLS listener must not succeed"
        plain.stop()
        thread.join(10)
    finally:
        broker.stop()


def test_mqtt_sink_publishes_the_released_wav(tmp_path, broker, two_requests_wav):
    cfg = dataclasses.replace(_config(tmp_path, broker.port), sinks={"hub": config.SinkConfig(type="mqtt")})
    sub = Subscriber(broker.port, [f"{ROOT}/audio/#"])
    press_first, pressed, daemons = _press_on_first_pending(cfg)
    daemon = _daemon(cfg, two_requests_wav, fast=False, publish=press_first)
    daemons.append(daemon)
    _start(daemon).join(40)
    assert sub.wait_for(lambda: len(sub.messages) == 1)
    topic, payload, retained = sub.messages[0]
    assert topic == f"{ROOT}/audio/{pressed[0]}" and payload[:4] == b"RIFF" and not retained
    sub.close()


class _RhasspyDialogue(Subscriber):
    """Rhasspy's dialogue manager as the guard meets it: each hotword detected opens a session, which turns
    the hotword off (reason dialogueSession) and asks the ASR to listen to that site; another site's session
    opens meanwhile. Records everything under hermes/ and the guard's events, in arrival order."""

    def __init__(self, port: int) -> None:
        self.sessions = 0
        super().__init__(port, ["hermes/#", f"{ROOT}/event/#"])

    def on_message(self, client, userdata, message) -> None:
        super().on_message(client, userdata, message)
        if message.topic == f"hermes/hotword/{DEVICE}/detected":
            self.sessions += 1
            client.publish("hermes/hotword/toggleOff", json.dumps({"siteId": DEVICE, "reason": "dialogueSession"}),
                           qos=1)
            client.publish("hermes/asr/startListening", json.dumps(
                {"siteId": DEVICE, "sessionId": f"session-{self.sessions}", "stopOnSilence": True}), qos=1)
            client.publish("hermes/asr/startListening", json.dumps(
                {"siteId": "bedroom", "sessionId": "not-this-site"}), qos=1)


def test_rhasspy_hears_exactly_the_released_request_and_nothing_else(tmp_path, broker, two_requests_wav):
    """The first request is released by a press, the second times out: Rhasspy's ASR receives the first's
    samples as audio frames, after the release record, then the end of its session; nothing of the second."""
    cfg = _config(tmp_path, broker.port, hermes=True)
    cfg = dataclasses.replace(cfg, sinks={**cfg.sinks, "rhasspy": config.SinkConfig(type="hermes")})
    rhasspy = _RhasspyDialogue(broker.port)
    assert rhasspy.wait_for(lambda: rhasspy.client.is_connected())
    press_first, pressed, daemons = _press_on_first_pending(cfg)
    daemon = _daemon(cfg, two_requests_wav, fast=False, publish=press_first)
    daemons.append(daemon)
    _start(daemon).join(40)
    assert rhasspy.wait_for(lambda: "discarded" in _events(rhasspy)), _events(rhasspy)
    rhasspy.close()
    assert _events(rhasspy) == ["wake", "pending", "releasing", "released", "released", "wake", "pending",
                                "discarded"], "a dialogue session's toggleOff is not a mute"
    topics = [t for t, _, _ in rhasspy.messages]
    frames = [p for t, p, _ in rhasspy.messages if t == f"hermes/audioServer/{DEVICE}/audioFrame"]
    heard = []
    for frame in frames:
        with wave.open(io.BytesIO(frame)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            assert 0 < w.getnframes() <= 1024
            heard.append(np.frombuffer(w.readframes(w.getnframes()), "<i2"))
    released = next((tmp_path / "sink").glob(f"*{pressed[0]}.wav"))
    with wave.open(str(released)) as w:
        assert np.array_equal(np.concatenate(heard), np.frombuffer(w.readframes(w.getnframes()), "<i2"))
    first_frame = topics.index(f"hermes/audioServer/{DEVICE}/audioFrame")
    assert first_frame > topics.index(f"{ROOT}/event/releasing"), "no audio before the release is on the record"
    stops = [(i, json.loads(p)) for i, (t, p, _) in enumerate(rhasspy.messages) if t == "hermes/asr/stopListening"]
    assert [s for _, s in stops] == [{"siteId": DEVICE, "sessionId": "session-1"}]
    assert stops[0][0] > max(i for i, t in enumerate(topics) if t.endswith("/audioFrame")), "ended after the audio"
    assert rhasspy.sessions == 2, "the second wake was announced, and its request never sent"
    sinks = [json.loads(p)["sink"] for t, p, _ in rhasspy.messages if t == f"{ROOT}/event/released"]
    assert sorted(sinks) == ["box", "rhasspy"]


@pytest.mark.parametrize("payload", [
    b"", b"[" * 50000, b"\xff\xfe", b"[]", b'"session"', b'{"siteId": "kitchen"}',
    b'{"siteId": "bedroom", "sessionId": "s"}', b'{"siteId": "patio", "sessionId": "s"}',
    b'{"sessionId": "s"}', b'{"siteId": "kitchen", "sessionId": 7}',
    b'{"siteId": "kitchen", "sessionId": ""}', b'{"siteId": "kitchen", "sessionId": "a\\u0000b"}',
    json.dumps({"siteId": DEVICE, "sessionId": "x" * 201}).encode(),
])
def test_an_odd_start_listening_names_no_session(payload):
    assert asr_session(payload, DEVICE) is None


@pytest.mark.parametrize("session", ["abc-1", "s", "x" * 200])
def test_a_start_listening_for_this_site_names_its_session(session):
    """Any printable sessionId of 1 to 200 characters, whatever else the message holds."""
    payload = json.dumps({"siteId": DEVICE, "sessionId": session, "stopOnSilence": True}).encode()
    assert asr_session(payload, DEVICE) == session


def test_status_reads_the_state_from_the_broker(tmp_path, broker, two_requests_wav):
    _start(_daemon(_config(tmp_path, broker.port), two_requests_wav)).join(30)
    toml = tmp_path / "guard.toml"
    toml.write_text(f'[device]\nid = "{DEVICE}"\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n')
    result = subprocess.run([str(GUARD), "--config", str(toml), "status"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{DEVICE}: offline, idle since ")
    assert "\n  audio: " in result.stdout and "\n  models: alexa (micro, threshold 0.9)" in result.stdout
    broker.stop()
    result = subprocess.run([str(GUARD), "--config", str(toml), "status"], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"guard: error: no MQTT broker reachable at 127.0.0.1:{broker.port} " \
                                    "(Connection refused)"


def test_an_unacknowledged_mqtt_release_is_recorded_as_unknown_never_discarded(tmp_path, broker, two_requests_wav):
    """The broker stalls while the release is in flight: the audio may still arrive, and it does."""
    cfg = dataclasses.replace(_config(tmp_path, broker.port),
                              sinks={"hub": config.SinkConfig(type="mqtt", timeout_seconds=1.0)})
    sub = Subscriber(broker.port, [f"{ROOT}/audio/#"])
    assert sub.wait_for(lambda: sub.client.is_connected())
    daemons, stalled = [], []

    def stall_then_press() -> None:
        deadline = time.monotonic() + 5
        while not consent_window_open(daemons[0]) and time.monotonic() < deadline:
            time.sleep(0.005)
        broker.proc.send_signal(signal.SIGSTOP)
        stalled.append(True)
        pin = daemons[0].pin_factory.pin(cfg.gpio.button_pin)
        pin.drive_low()
        pin.drive_high()

    def hook(event: Event) -> None:
        if event.kind == "pending" and not stalled:
            threading.Thread(target=stall_then_press, daemon=True).start()
        if event.kind == "release-unknown":
            broker.proc.send_signal(signal.SIGCONT)

    daemon = _daemon(cfg, two_requests_wav, fast=False, publish=hook)
    daemons.append(daemon)
    try:
        _start(daemon).join(40)
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    records = audit.read(tmp_path / "audit.jsonl")
    first = records[0]["utterance"]
    said = [r["event"] for r in records if r.get("utterance") == first]
    assert said[:4] == ["wake", "pending", "releasing", "release-unknown"], said
    assert "discarded" not in said, "audio that may still arrive is never recorded as discarded"
    assert "may still arrive" in [r for r in records if r["event"] == "release-unknown"][0]["reason"]
    assert sub.wait_for(lambda: any(t == f"{ROOT}/audio/{first}" for t, _, _ in sub.messages), timeout=20)
    sub.close()


@contextlib.contextmanager
def _running(cfg, wav, topics=(f"{ROOT}/#",)):
    """A daemon at real-time pace with a subscriber, both connected; stopped and closed afterwards."""
    sub = Subscriber(cfg.mqtt.port, list(topics))
    daemon = _daemon(cfg, wav, fast=False)
    thread = _start(daemon)
    try:
        assert sub.wait_for(lambda: daemon.mqtt.listening.is_set())
        yield daemon, sub
    finally:
        daemon.stop()
        thread.join(10)
        sub.close()


def test_malformed_messages_never_stop_remote_mute(tmp_path, broker, quiet_wav):
    """A Hermes toggle nested 100000 deep and a topic that is not UTF-8 (which only a rogue broker sends)."""
    with _running(_config(tmp_path, broker.port, hermes=True), quiet_wav) as (daemon, sub):
        sub.publish("hermes/hotword/toggleOff", "[" * 100000)
        assert sub.wait_for(lambda: "error" in _events(sub))
        rogue = paho.MQTTMessage(topic=b"guard/\xff\xfe/cmd/mute")
        daemon.mqtt.on_message(daemon.mqtt.client, None, rogue)  # paho's own message object, as its thread would
        assert sub.wait_for(lambda: _events(sub).count("error") == 2)
        sub.publish(f"{ROOT}/cmd/mute", "")
        assert sub.wait_for(lambda: daemon.gate.state is State.MUTED), "remote mute still works"
        assert daemon.mqtt.client._thread.is_alive()


def test_a_rhasspy_dialogue_session_is_not_a_privacy_mute(tmp_path, broker, quiet_wav):
    with _running(_config(tmp_path, broker.port, hermes=True), quiet_wav) as (daemon, sub):
        for reason in ("dialogueSession", "playAudio", "ttsSay"):
            sub.publish("hermes/hotword/toggleOff", json.dumps({"siteId": DEVICE, "reason": reason}))
        sub.publish("hermes/hotword/toggleOff", json.dumps({"siteId": "another-site"}))
        sub.publish(f"{ROOT}/cmd/wipe", "")  # a marker: once it is recorded, any mute queued before it was handled
        assert sub.wait_for(lambda: "wiped" in _events(sub))
        assert daemon.gate.state is State.IDLE
        sub.publish("hermes/hotword/toggleOff", json.dumps({"siteId": DEVICE, "reason": ""}))
        assert sub.wait_for(lambda: daemon.gate.state is State.MUTED and daemon.gate.muted_by == "rhasspy")


def test_rhasspy_lifts_only_its_own_mute(tmp_path, broker, quiet_wav):
    """Home Assistant's remote_mute switch holds against Rhasspy's toggleOn (with or without a reason); Rhasspy's
    own toggleOff is lifted by its toggleOn; the hub's unmute cannot lift Rhasspy's mute either."""
    with _running(_config(tmp_path, broker.port, hermes=True), quiet_wav) as (daemon, sub):
        sub.publish(f"{ROOT}/cmd/remote_mute", "ON")
        assert sub.wait_for(lambda: daemon.gate.state is State.MUTED and daemon.gate.muted_by == "remote")
        for body in ({"siteId": DEVICE}, {"siteId": DEVICE, "reason": ""}):
            sub.publish("hermes/hotword/toggleOn", json.dumps(body))
        assert sub.wait_for(lambda: _events(sub).count("refused") == 2)
        assert daemon.gate.state is State.MUTED and daemon.gate.muted_by == "remote"
        sub.publish(f"{ROOT}/cmd/remote_mute", "OFF")
        assert sub.wait_for(lambda: daemon.gate.state is State.IDLE)
        sub.publish("hermes/hotword/toggleOff", json.dumps({"siteId": DEVICE}))
        assert sub.wait_for(lambda: daemon.gate.state is State.MUTED and daemon.gate.muted_by == "rhasspy")
        sub.publish(f"{ROOT}/cmd/remote_mute", "OFF")
        assert sub.wait_for(lambda: _events(sub).count("refused") == 3)
        assert daemon.gate.state is State.MUTED
        sub.publish("hermes/hotword/toggleOn", json.dumps({"siteId": DEVICE}))
        assert sub.wait_for(lambda: daemon.gate.state is State.IDLE)
    refused = [r for r in audit.read(tmp_path / "audit.jsonl") if r["event"] == "refused"]
    assert [r["by"] for r in refused] == ["rhasspy", "rhasspy", "remote"]


def test_a_hermes_wake_carries_the_configured_sensitivity_not_the_score(tmp_path, broker, two_requests_wav):
    """Rhasspy's currentSensitivity is the threshold the word was heard at; the score goes in guard's own event."""
    cfg = _config(tmp_path, broker.port, hermes=True)
    cfg = dataclasses.replace(cfg, wake=dataclasses.replace(cfg.wake, threshold=0.42))
    with _running(cfg, two_requests_wav, ("hermes/hotword/#", f"{ROOT}/event/wake")) as (daemon, sub):
        assert sub.wait_for(lambda: f"hermes/hotword/{DEVICE}/detected" in sub.topics(), 30)
        hermes = next(json.loads(p) for t, p, _ in sub.messages if t.startswith("hermes/"))
        assert hermes == {"siteId": DEVICE, "modelId": "alexa", "currentSensitivity": 0.42}
        assert sub.wait_for(lambda: f"{ROOT}/event/wake" in sub.topics())
        wake = next(json.loads(p) for t, p, _ in sub.messages if t == f"{ROOT}/event/wake")
        assert wake["threshold"] == 0.42 and wake["score"] > 0.42


def test_floods_are_debounced_and_counted_not_recorded_one_by_one(tmp_path, broker, quiet_wav):
    with _running(_config(tmp_path, broker.port), quiet_wav, (f"{ROOT}/#", "homeassistant/#")) as (daemon, sub):
        entities = len(daemon.mqtt.discovery_messages())
        assert sub.wait_for(lambda: len([t for t, _, _ in sub.messages if t.endswith("/config")]) >= entities)
        for _ in range(300):
            sub.publish("homeassistant/status", "online")
        for _ in range(200):
            sub.publish(f"{ROOT}/cmd/wipe", "")
        sub.publish(f"{ROOT}/cmd/mute", "")  # a mute is never held back by the limit
        assert sub.wait_for(lambda: daemon.gate.state is State.MUTED)
        configs = [t for t, _, _ in sub.messages if t.endswith("/config")]
        assert len(configs) <= 2 * entities, f"{len(configs)} discovery messages for 300 'online'"
        wiped = [r for r in audit.read(tmp_path / "audit.jsonl") if r["event"] == "wiped"]
        assert len(wiped) <= 30, f"{len(wiped)} fsynced records for 200 wipes"
        assert any("ignoring the excess" in e.get("reason", "") for e in sub.json(f"{ROOT}/event/error"))


def test_a_message_paho_gave_up_on_does_not_break_the_outbox(tmp_path):
    link = MqttLink(config.MqttConfig(host="127.0.0.1", port=1), DEVICE, lambda verb: None,
                    AuditLog(tmp_path / "audit.jsonl", DEVICE))
    link._send(f"{ROOT}/event/wake", b"{}")
    failed = paho.MQTTMessageInfo(1)
    failed.rc = paho.MQTT_ERR_NO_CONN  # what paho leaves when the socket dropped under the publish
    link.outbox.items[0].sent = failed
    assert link.undelivered() == 1 and link.outbox.items[0].sent is None, "kept, to be sent again after reconnect"


def test_invariant2_no_remote_message_releases_a_pending_utterance(tmp_path, broker, two_requests_wav):
    """Every kind of inbound message, sent while an utterance is pending to a sink that accepts voice too."""
    cfg = dataclasses.replace(_config(tmp_path, broker.port, hermes=True), sinks={
        "box": config.SinkConfig(path=str(tmp_path / "sink"), confirm=("button", "voice"))})
    sub = Subscriber(broker.port, [f"{ROOT}/#"])
    assert sub.wait_for(lambda: sub.client.is_connected())
    sub.publish(f"{ROOT}/cmd/release", "", retain=True)  # waiting for the guard when it subscribes
    daemons, sent = [], []
    keep_pending = [(f"{ROOT}/cmd/release", ""), (f"{ROOT}/cmd/release", "box"), (f"{ROOT}/cmd/sink", "/tmp"),
                    (f"{ROOT}/cmd/confirm", "voice"), (f"{ROOT}/cmd/press", ""), (f"{ROOT}/cmd/unmute", ""),
                    (f"{ROOT}/cmd/remote_mute", "OFF"), (f"{ROOT}/cmd/remote_mute", "MAYBE"),
                    (f"{ROOT}/cmd/mute/../release", ""), (f"{ROOT}/cmd/", "x" * 5000),
                    ("hermes/hotword/toggleOn", json.dumps({"siteId": DEVICE})),
                    ("hermes/hotword/toggleOff", json.dumps({"siteId": DEVICE, "reason": "dialogueSession"})),
                    ("hermes/hotword/toggleOff", "[" * 50000), ("guard/other/cmd/release", "")]

    def flood_while_pending(event: Event) -> None:
        if event.kind == "pending" and not sent:
            sent.append(event.utterance)

            def flood() -> None:
                while not consent_window_open(daemons[0]):
                    time.sleep(0.005)
                for topic, payload in keep_pending:
                    sub.publish(topic, payload)
                sub.publish(f"{ROOT}/cmd/cancel", "")  # the last word: this one only adds privacy
            threading.Thread(target=flood, daemon=True).start()

    daemon = _daemon(cfg, two_requests_wav, fast=False, publish=flood_while_pending)
    daemons.append(daemon)
    _start(daemon).join(40)
    records = audit.read(tmp_path / "audit.jsonl")
    first = [r["event"] for r in records if r.get("utterance") == sent[0]]
    assert first == ["wake", "pending", "discarded"], first
    assert [r for r in records if r.get("utterance") == sent[0]][-1]["reason"] == "cancelled by remote"
    assert not any(r["event"].startswith("releas") for r in records)
    assert list((tmp_path / "sink").iterdir()) == []
    errors = [json.loads(p)["reason"] for t, p, _ in sub.messages if t == f"{ROOT}/event/error"]
    assert len(errors) >= 4 and any("more like this" in e for e in errors), "refusals counted per kind, not one each"
    sub.client.publish(f"{ROOT}/cmd/release", b"", qos=1, retain=True).wait_for_publish(5)  # clear the retained one
    sub.close()


def test_an_id_change_withdraws_the_entities_announced_under_the_old_id(tmp_path, broker, quiet_wav):
    """Home Assistant removes an entity whose retained config becomes empty; stale ones would linger forever."""
    old = dataclasses.replace(_config(tmp_path, broker.port), device=config.DeviceConfig("old-name"))
    with _running(old, quiet_wav, ("homeassistant/#",)) as (daemon, sub):
        entities = len(daemon.mqtt.discovery_messages())
        assert sub.wait_for(lambda: len(sub.messages) >= entities)
    with _running(_config(tmp_path, broker.port), quiet_wav, ("homeassistant/#",)) as (daemon, sub):
        assert sub.wait_for(lambda: len([t for t, p, _ in sub.messages if f"/{DEVICE}/" in t and p]) >= entities)
    late = Subscriber(broker.port, ["homeassistant/#"])
    assert late.wait_for(lambda: len(late.messages) >= entities)
    late.publish("homeassistant/test-marker", "end")  # after the retained burst: everything retained has come
    assert late.wait_for(lambda: "homeassistant/test-marker" in late.topics())
    retained = {t for t, p, r in late.messages if r and p}
    assert all(f"/{DEVICE}/" in t for t in retained), "the old id's entities were withdrawn"
    late.close()


def _home_assistant_reads(python: str, configs: dict, states: list[dict]) -> dict:
    checker = Path(__file__).with_name("home_assistant_check.py")
    result = subprocess.run([python, str(checker)], input=json.dumps(
        {"prefix": "homeassistant", "messages": configs, "states": states}), capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("style", ["entities", "device"])
def test_home_assistants_own_code_accepts_the_discovery_and_reads_each_state(tmp_path, broker, two_requests_wav,
                                                                              home_assistant_python, style):
    sub = Subscriber(broker.port, ["homeassistant/#", f"{ROOT}/state"])
    cfg = _config(tmp_path, broker.port, discovery_style=style)
    press_first, _, daemons = _press_on_first_pending(cfg)
    daemon = _daemon(cfg, two_requests_wav, publish=press_first)
    daemons.append(daemon)
    _start(daemon).join(30)
    assert sub.wait_for(lambda: any(json.loads(p)["state"] == "idle" and "last_wake" in json.loads(p)
                                    for t, p, _ in sub.messages if t == f"{ROOT}/state"))
    sub.close()
    configs = {t: json.loads(p) for t, p, _ in sub.messages if t.endswith("/config") and p}
    assert len(configs) == (10 if style == "entities" else 1)
    states = [json.loads(p) for t, p, _ in sub.messages if t == f"{ROOT}/state"]
    assert {s["state"] for s in states} >= {"idle", "capturing", "pending"}
    read = _home_assistant_reads(home_assistant_python, configs, states)
    assert len(read) == 10 and not [v["error"] for v in read.values() if "error" in v], read
    by_name = {topic.split("#")[0].split("/")[-2].removeprefix(f"guard_{DEVICE}_"): v["rendered"]
               for topic, v in read.items()}
    assert by_name["capturing"] == ["ON" if s["state"] in ("capturing", "pending") else "OFF" for s in states]
    assert set(by_name["muted"]) == {"OFF"} and set(by_name["remote_mute"]) == {"OFF"}
    assert by_name["last_wake_word"][-1] == "alexa" and float(by_name["last_wake_score"][-1]) > 0.5
    assert by_name["started"][-1] == states[-1]["started"]


def test_the_home_assistant_check_can_fail(home_assistant_python):
    """The control: HA's code refuses a config it would refuse in a running Home Assistant."""
    broken = {"name": "x", "state_topic": "a", "device_class": "loudness_of_secrets", "origin": {"name": "x"}}
    read = _home_assistant_reads(home_assistant_python, {"homeassistant/sensor/k/x/config": broken}, [])
    assert "device_class" in read["homeassistant/sensor/k/x/config"]["error"]


def test_forget_removes_every_retained_trace_so_home_assistant_drops_the_device(tmp_path, broker, quiet_wav):
    cfg = _config(tmp_path, broker.port)
    daemon = _daemon(cfg, quiet_wav, fast=False)
    thread = _start(daemon)
    sub = Subscriber(broker.port, ["homeassistant/#", f"{ROOT}/state"])
    assert sub.wait_for(lambda: len([m for m in sub.messages if m[0].endswith("/config")]) >= 10)
    daemon.stop()
    thread.join(10)
    sub.close()
    (tmp_path / "guard.toml").write_text(f'[device]\nid = "{DEVICE}"\n[mqtt]\nhost = "127.0.0.1"\n'
                                         f'port = {broker.port}\n[audit]\npath = "{tmp_path / "audit.jsonl"}"\n')
    (tmp_path / "mqtt-discovered").write_text("homeassistant/switch/kitchen/an_older_entity/config\n")
    result = subprocess.run([str(GUARD), "--config", str(tmp_path / "guard.toml"), "forget"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "cleared 14 retained topics" in result.stdout, result.stderr
    assert not (tmp_path / "mqtt-discovered").exists()
    prober = Subscriber(broker.port, ["unused"])
    prober.publish("probe", b"x", retain=True)
    prober.close()
    late = Subscriber(broker.port, ["homeassistant/#", f"{ROOT}/#", "probe"])  # retained ones come in this order
    assert late.wait_for(lambda: any(t == "probe" for t, _, _ in late.messages))
    assert [t for t, _, _ in late.messages] == ["probe"], late.messages
    late.close()
    broker.stop()
    down = subprocess.run([str(GUARD), "--config", str(tmp_path / "guard.toml"), "forget"], capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 1 and down.stderr.count("\n") == 1 and "no MQTT broker reachable" in down.stderr


def test_invariant7_a_mute_queued_behind_a_flood_of_other_commands_still_acts_at_once(tmp_path, broker, quiet_wav):
    """The broker delivers one connection's messages in order: with the guard behind on its main connection
    (held at the flood's first message), 20,000 commands published before a mute sit ahead of it there; the
    mute comes on the guard's own mute connection and acts while they still wait. While that connection is
    down, the main one acts on mutes instead."""
    with _running(_config(tmp_path, broker.port), quiet_wav) as (daemon, sub):
        assert sub.wait_for(lambda: daemon.mqtt.mute_client.is_connected())
        handled, behind = [], threading.Event()
        on_message = daemon.mqtt.client.on_message

        def held(client, userdata, message) -> None:
            behind.wait(30)  # the guard is behind on this connection: everything after this one waits
            handled.append(message.topic)
            on_message(client, userdata, message)
        daemon.mqtt.client.on_message = held
        for _ in range(20000):
            sub.client.publish(f"{ROOT}/cmd/release", b"", qos=0)
        sub.client.publish(f"{ROOT}/cmd/mute", b"", qos=0)
        assert sub.wait_for(lambda: daemon.gate.state is State.MUTED, 20), "the mute did not wait for the flood"
        assert handled == [], "muted while every command of the flood still waited on the main connection"
        behind.set()
        assert sub.wait_for(lambda: len(handled) == 20001, 60), len(handled)
        daemon.mqtt.mute_client.disconnect()
        daemon.mqtt.mute_client.loop_stop()
        sub.publish(f"{ROOT}/cmd/remote_mute", "OFF")
        assert sub.wait_for(lambda: daemon.gate.state is State.IDLE)
        sub.publish(f"{ROOT}/cmd/remote_mute", "ON")
        assert sub.wait_for(lambda: daemon.gate.state is State.MUTED), "the main connection acts while it is down"
