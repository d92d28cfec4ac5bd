"""The hub's view: events, retained state, Home Assistant discovery, and commands that only add privacy.

The only paho user. Inbound messages become one of four verbs (mute, unmute,
cancel, wipe) posted to the daemon's loop; nothing here can release audio or
change a sink. Events wait in a bounded outbox until the broker acknowledges
them, so a broker restart loses none; overflow is counted in the audit log.
"""

import contextlib
import json
import logging
import math
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as paho

from guard import discovery, hermes
from guard.audit import AuditLog
from guard.commands import MAX_COMMAND_BYTES, CommandError, CommandRate, parse_command
from guard.config import MqttConfig
from guard.errors import ConfigError, DeliveryUncertain, GuardError
from guard.hermes import HermesSite
from guard.refusals import RefusalTally
from guard.vocabulary import Event, EventKind, State

log = logging.getLogger(__name__)

DISCOVERY_DEBOUNCE_SECONDS = 10.0  # Home Assistant restarting says "online" once; a flood gets one answer
DROP_AUDIT_SECONDS = 60.0  # while events are being dropped, the count goes to the audit log this often


def read_password(path: str) -> str:
    try:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path}: MQTT password file is readable by group or others; run: chmod 600 {path}")
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the MQTT password file ({e.strerror}); fix [mqtt] password_file") \
            from None


def configured_client(settings: MqttConfig, client_id: str) -> paho.Client:
    """A paho client with the [mqtt] table's credentials and TLS: the daemon's links and the brief ones alike."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
    if settings.username:
        client.username_pw_set(settings.username,
                               read_password(settings.password_file) if settings.password_file else None)
    if settings.tls:
        for key in ("ca_file", "cert_file", "key_file"):  # named one by one: paho's error names none
            path = getattr(settings, key)
            if path:
                try:
                    Path(path).open("rb").close()
                except OSError as e:
                    raise ConfigError(f"[mqtt] {key} = {path!r}: cannot be read ({e.strerror}); fix the path or "
                                      "its permissions") from None
        try:
            client.tls_set(ca_certs=settings.ca_file or None, certfile=settings.cert_file or None,
                           keyfile=settings.key_file or None)
        except (OSError, ValueError) as e:
            raise ConfigError(f"[mqtt] TLS files: {e}; fix ca_file, cert_file, key_file") from None
    return client


def _never_raises(callback: Callable) -> Callable:
    """Wrap a paho callback: an exception there would kill paho's thread and with it remote mute."""
    def guarded(self, *args) -> None:
        try:
            callback(self, *args)
        except Exception:
            log.exception("MQTT %s failed; the link keeps running", callback.__name__)
    guarded.__name__ = callback.__name__
    return guarded


class Subscriptions:
    """Whether the broker granted both connections' subscriptions: a command published before that is lost, so
    `listening` (what a hub or a test waits for before a command) waits for both."""

    def __init__(self, broker: str) -> None:
        self.broker, self.listening = broker, threading.Event()
        self._granted: set[paho.Client] = set()
        self._lock = threading.Lock()

    @_never_raises
    def answered(self, client, userdata, mid, reason_codes, properties) -> None:
        """paho's on_subscribe: a refused subscription (the broker's ACL) is named in the log."""
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            log.error("broker %s refused a subscription (%s): remote commands cannot reach the guard; check the "
                      "broker's ACL for this user", self.broker, ", ".join(refused))
        self.heard(client, not refused)

    def heard(self, client: paho.Client, granted: bool) -> None:
        with self._lock:
            (self._granted.add if granted else self._granted.discard)(client)
            (self.listening.set if len(self._granted) == 2 else self.listening.clear)()


class _AtMostEvery:
    """True when called for the first time, then at most once per `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self._last = seconds, -math.inf

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.seconds:
            return False
        self._last = now
        return True


@dataclass
class _Outgoing:
    topic: str
    payload: bytes
    sent: paho.MQTTMessageInfo | None = None  # the latest try; its is_published() is the broker's ack


class Outbox:
    """Events not yet acknowledged by the broker, oldest first: a broker restart loses none of them.

    At most `limit` wait; a new event beyond that drops the oldest, and the drops are counted
    until `take_dropped` reports them. Not thread-safe: the link holds its lock around it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: deque[_Outgoing] = deque()
        self.dropped = 0
        self._drops_due = _AtMostEvery(DROP_AUDIT_SECONDS)  # one drop record a minute while the broker is away

    def add(self, topic: str, payload: bytes) -> _Outgoing:
        self.prune()
        if len(self.items) >= self.limit:
            self.items.popleft()
            self.dropped += 1
        item = _Outgoing(topic, payload)
        self.items.append(item)
        return item

    def take_dropped(self, now: bool = False) -> int:
        """The drops not yet reported, to report now (at most once a minute, unless `now`)."""
        if not self.dropped or not (now or self._drops_due()):
            return 0
        dropped, self.dropped = self.dropped, 0
        return dropped

    def prune(self) -> None:
        """Forget events from the front that the broker has acknowledged.

        Done lazily (paho marks a message published only after its on_publish callback).
        A message paho gave up on (dropped with the connection) is sent again after reconnect.
        """
        while self.items and self.items[0].sent is not None:
            try:
                acknowledged = self.items[0].sent.is_published()
            except (RuntimeError, ValueError):
                self.items[0].sent = None
                return
            if not acknowledged:
                return
            self.items.popleft()

    def __len__(self) -> int:
        self.prune()
        return len(self.items)


class MqttLink:
    """One connection to the broker, kept up with backoff; the daemon keeps guarding without it.

    Args:
        settings: the [mqtt] table.
        device_id: topic root `guard/<device_id>/`.
        on_command: receives (by, verb): by "remote" (the hub) or "rhasspy" (Hermes toggles), verb "mute",
            "unmute", "cancel" or "wipe" (from paho's thread: queue it).
        audit: where dropped events are counted.
        discovered: a file in the state folder noting the discovery topics last announced.
    """

    def __init__(self, settings: MqttConfig, device_id: str, on_command: Callable[[str, str], None],
                 audit: AuditLog, discovered: Path | None = None) -> None:
        self.settings, self.device_id, self.on_command, self.audit = settings, device_id, on_command, audit
        self.discovered = discovered  # the config topics last announced, so an id change can withdraw them
        self.root = f"guard/{device_id}"
        self.url = f"mqtt://{settings.host}:{settings.port}"  # names the broker in the record of a release
        self.started = datetime.now(UTC).isoformat(timespec="seconds")
        self._state = {"state": State.IDLE, "since": self.started, "muted_by": None, "started": self.started}
        self.health: dict[str, str] = {}
        self.outbox = Outbox(settings.outbox_events)
        self._discovery_due = _AtMostEvery(DISCOVERY_DEBOUNCE_SECONDS)
        self.rate = CommandRate(lambda reason: self.error(reason))  # shared by both connections' threads
        self.hermes = HermesSite(device_id)
        self.refusals = RefusalTally(lambda peer, kind, reason, count, first: self.error(
            reason if first else f"{count} more like this in {self.refusals.interval_seconds:g} s: {reason}"))
        self._lock = threading.Lock()  # the outbox and state; never held while calling paho
        self._order = threading.Lock()  # one publisher at a time, so events leave in the order they came
        self.connected = threading.Event()
        self.subscriptions = Subscriptions(f"{settings.host}:{settings.port}")
        self.listening = self.subscriptions.listening  # commands are heard from here on
        self.client = self._client(f"guard-{self.device_id}")
        # Mutes come on a connection of their own: a flood of other commands, queued by the broker ahead
        # of them in one ordered stream, cannot hold a mute back.
        self.mute_topics = frozenset([f"{self.root}/cmd/mute", f"{self.root}/cmd/remote_mute"]
                                     + ([hermes.TOGGLES[0]] if settings.hermes else []))
        self.mute_client = self._client(f"guard-{self.device_id}-mute", main=False)

    def _client(self, client_id: str, main: bool = True) -> paho.Client:
        client = configured_client(self.settings, client_id)
        if main:
            client.will_set(f"{self.root}/availability", "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=self.settings.reconnect_max_seconds)
        client.on_connect = self._on_connect if main else self._on_mute_connect
        client.on_subscribe = self.subscriptions.answered
        client.on_disconnect = self._on_disconnect
        client.on_message = self.on_message
        return client

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        for client in (self.client, self.mute_client):
            client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive_seconds)
            client.loop_start()

    def stop(self, flush_seconds: float = 3.0) -> None:
        """Give queued events a moment to leave, say offline, disconnect."""
        self.refusals.close()
        deadline = time.monotonic() + flush_seconds
        while self.undelivered() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.connected.is_set():
            info = self.client.publish(f"{self.root}/availability", "offline", qos=1, retain=True)
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        if self.undelivered():
            log.warning("%d MQTT message(s) not delivered before exit", self.undelivered())
        self.connected.clear()
        for client in (self.client, self.mute_client):
            client.disconnect()
            client.loop_stop()

    @_never_raises
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the connection: %s", self.settings.host, self.settings.port, reason_code)
            return
        log.info("broker %s:%d connected", self.settings.host, self.settings.port)
        client.subscribe([(f"{self.root}/cmd/#", 1), ("homeassistant/status", 1)]
                         + ([(topic, 1) for topic in hermes.SUBSCRIPTIONS] if self.settings.hermes else []))
        with self._order:
            client.publish(f"{self.root}/availability", "online", qos=1, retain=True)
            if self.settings.discovery:
                self.publish_discovery()
            with self._lock:
                self.outbox.prune()
                state, waiting = json.dumps({**self._state, "health": self.health}), list(self.outbox.items)
                dropped = self.outbox.take_dropped(now=True)
                self.connected.set()
            client.publish(f"{self.root}/state", state, qos=1, retain=True)
            for item in waiting:
                item.sent = client.publish(item.topic, item.payload, qos=1)
        if dropped:
            self._audit_drops(dropped)

    @_never_raises
    def _on_mute_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(topic, 1) for topic in sorted(self.mute_topics)])

    @_never_raises
    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.subscriptions.heard(client, False)
        if client is not self.client:
            return
        if self.connected.is_set():
            log.warning("broker connection lost (%s); events wait in the outbox", reason_code)
        self.connected.clear()

    def _audit_drops(self, count: int) -> None:
        try:
            self.audit.record("events_dropped", count=count, reason="broker unreachable, outbox full")
        except GuardError as e:
            log.error("%d MQTT event(s) dropped; the record waits for the audit log: %s", count, e)
            self.audit.defer("events_dropped", count=count, reason="broker unreachable, outbox full")

    def undelivered(self) -> int:
        """Messages not yet acknowledged by the broker."""
        with self._lock:
            return len(self.outbox)

    # -- outbound -------------------------------------------------------------------

    def _send(self, topic: str, payload: bytes) -> None:
        """Queue an event; it leaves now if connected, else after reconnect, in order."""
        with self._order:
            with self._lock:
                item = self.outbox.add(topic, payload)
                connected = self.connected.is_set()
                dropped = self.outbox.take_dropped()
            if connected:
                try:
                    item.sent = self.client.publish(topic, payload, qos=1)
                except (OSError, RuntimeError, ValueError) as e:  # it stays in the outbox for the reconnect
                    log.warning("MQTT publish of %s failed (%s); kept for the reconnect", topic, e)
        if dropped:
            self._audit_drops(dropped)

    def event(self, event: Event) -> None:
        """Publish a gate event, the retained state it leads to, and the hub-facing extras."""
        body = event.to_dict()
        self._send(f"{self.root}/event/{event.kind}", json.dumps(body).encode())
        if event.kind in discovery.ACTIVITY_TYPES:
            self._send(f"{self.root}/activity", json.dumps({"event_type": discovery.ACTIVITY_TYPES[event.kind],
                                                             "utterance": event.utterance}).encode())
        if event.kind is EventKind.WAKE and self.settings.hermes:
            self._send(*self.hermes.detected(event))
        self._update_state(event)

    def _update_state(self, event: Event) -> None:
        with self._order:
            with self._lock:
                muted_by = event.by if event.kind is EventKind.MUTED else self._state["muted_by"]
                if event.state is not State.MUTED:
                    muted_by = None
                if event.state == self._state["state"] and muted_by == self._state["muted_by"]:
                    return
                self._state.update(state=event.state, since=event.time, muted_by=muted_by)
                if event.kind is EventKind.WAKE:  # kept in the retained state, so it survives a restart of the hub
                    self._state["last_wake"] = {"model": event.model, "score": event.score, "time": event.time}
                state, connected = json.dumps({**self._state, "health": self.health}), self.connected.is_set()
            if connected:
                self.client.publish(f"{self.root}/state", state, qos=1, retain=True)

    def error(self, reason: str) -> None:
        """A refused inbound message: logged and told to the hub, never acted on."""
        log.warning("MQTT command ignored: %s", reason)
        self._send(f"{self.root}/event/error", json.dumps(
            {"kind": EventKind.ERROR, "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
             "reason": reason}).encode())

    def send_audio(self, utterance_id: str, wav: bytes, timeout_seconds: float) -> str:
        """Publish a released WAV (QoS 1, not retained) and wait for the broker's ack. Never queued."""
        topic = f"{self.root}/audio/{utterance_id}"
        self._publish_and_wait([(topic, wav)], timeout_seconds)
        return f"{self.url}/{topic}"

    def send_hermes_audio(self, chunks: list[bytearray], timeout_seconds: float) -> str:
        """Publish a released utterance as Hermes audio frames, then stop the ASR session Rhasspy started
        for this wake, so it transcribes now (QoS 1, wait for every ack). Never queued."""
        self._publish_and_wait(self.hermes.release(chunks), timeout_seconds)
        return f"{self.url}/{self.hermes.audio_topic}"

    def _publish_and_wait(self, messages: list[tuple[str, bytes | bytearray]], timeout_seconds: float) -> None:
        if not self.connected.is_set():
            raise GuardError("broker not connected; nothing was sent")
        deadline = time.monotonic() + timeout_seconds
        sent = []
        try:
            for topic, payload in messages:
                sent.append(self.client.publish(topic, payload, qos=1, retain=False))
            for info in sent:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError) as e:  # paho: the message was dropped (disconnected, queue full)
            if not sent:
                raise GuardError(f"{messages[0][0]} was not sent ({e})") from None
            raise DeliveryUncertain(f"{messages[0][0]}: the broker connection failed mid-way ({e}); "
                                    "part of the audio may arrive") from None
        if not all(info.is_published() for info in sent):
            raise DeliveryUncertain(f"broker did not acknowledge {messages[0][0]} within {timeout_seconds:g} s; "
                                    "the client still holds it, so it may still arrive when the broker comes back")

    # -- inbound --------------------------------------------------------------------

    @_never_raises
    def on_message(self, client, userdata, message) -> None:
        """Each inbound message, from paho's thread (of either connection): a command, or refused and counted."""
        try:
            topic = message.topic
        except UnicodeDecodeError:
            self.error("a message with a topic that is not UTF-8 was refused")
            return
        if topic == "homeassistant/status":
            if message.payload == b"online" and self.settings.discovery and self._discovery_due():
                self.publish_discovery()
            return
        if client is self.client and topic in self.mute_topics and self.mute_client.is_connected():
            return  # the mute connection hears these; while it is down, this one acts on them
        if len(message.payload) > MAX_COMMAND_BYTES:  # before anything parses it
            self.refusals.refused("mqtt", "oversized", f"payload of {len(message.payload)} bytes on "
                                                       f"{topic[:80]!r} is over {MAX_COMMAND_BYTES}")
            return
        if topic == hermes.START_LISTENING:
            self.hermes.heard_start_listening(message.payload)
            return
        try:
            command = parse_command(topic, message.payload, self.device_id)
        except CommandError as e:
            self.refusals.refused("mqtt", "malformed", str(e))
            return
        if command is not None and (command[1] == "mute" or self.rate.allows()):  # a mute is never held back
            self.on_command(*command)

    # -- Home Assistant -------------------------------------------------------------

    def discovery_messages(self) -> dict[str, dict]:
        """Config topic -> payload of this guard's Home Assistant discovery, in the configured style."""
        return discovery.messages(self.settings, self.device_id)

    def publish_discovery(self) -> None:
        """Announce every entity (retained), and withdraw those this device announced under an earlier id."""
        messages = self.discovery_messages()
        for topic in discovery.earlier(self.discovered) - messages.keys():
            self.client.publish(topic, b"", qos=1, retain=True)  # an empty retained config removes the entity
        for topic, payload in messages.items():
            self.client.publish(topic, json.dumps(payload), qos=1, retain=True)
        discovery.remember(self.discovered, messages.keys())


def _brief_client(settings: MqttConfig, purpose: str) -> paho.Client:
    """A client for one short job beside the daemon (status, forget), with the daemon's credentials."""
    return configured_client(settings, f"guard-{purpose}-{os.getpid()}")


def _connect(client: paho.Client, settings: MqttConfig) -> None:
    try:
        client.connect(settings.host, settings.port, keepalive=10)
    except OSError as e:
        raise GuardError(f"no MQTT broker reachable at {settings.host}:{settings.port} ({e.strerror or e})") from None


def forget(settings: MqttConfig, device_id: str, discovered: Path | None, wait_seconds: float = 5.0) -> list[str]:
    """Remove what this guard left retained on the broker: its Home Assistant entities (both discovery styles,
    and those noted in `discovered`), its state and availability. Returns the topics cleared."""
    topics = {f"guard/{device_id}/state", f"guard/{device_id}/availability"}
    topics |= discovery.topics_of_both_styles(settings, device_id)
    if discovered is not None:
        with contextlib.suppress(OSError):
            topics |= set(discovered.read_text().split())
    client = _brief_client(settings, "forget")
    refused: list[str] = []
    client.on_connect = lambda c, u, f, reason_code, p: refused.append(str(reason_code)) \
        if reason_code.is_failure else None
    _connect(client, settings)
    client.loop_start()
    try:
        sent = [client.publish(topic, b"", qos=1, retain=True) for topic in sorted(topics)]
        deadline = time.monotonic() + wait_seconds
        for message in sent:
            message.wait_for_publish(max(0.0, deadline - time.monotonic()))
    finally:
        client.disconnect()
        client.loop_stop()
    if refused or not all(m.is_published() for m in sent):
        why = f"refused the connection: {refused[0]}" if refused else f"did not acknowledge in {wait_seconds:g} s"
        raise GuardError(f"broker {settings.host}:{settings.port} {why}; the entities stay in Home Assistant")
    if discovered is not None:
        discovered.unlink(missing_ok=True)
    return sorted(topics)


def read_status(settings: MqttConfig, device_id: str, wait_seconds: float = 3.0) -> dict:
    """The retained availability and state of a guard, as its broker holds them."""
    got: dict = {}
    done = threading.Event()
    root = f"guard/{device_id}"
    client = _brief_client(settings, "status")

    def on_connect(c, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            got["no_connection"] = str(reason_code)
            done.set()
        else:
            c.subscribe([(f"{root}/availability", 1), (f"{root}/state", 1)])

    def on_retained(c, userdata, message):  # not named on_message: mutants/mqtt.toml scopes the link's by name
        got[message.topic.rsplit("/", 1)[1]] = message.payload.decode()
        if {"availability", "state"} <= got.keys():
            done.set()

    client.on_connect, client.on_message = on_connect, on_retained
    _connect(client, settings)
    client.loop_start()
    done.wait(wait_seconds)
    client.disconnect()
    client.loop_stop()
    if "no_connection" in got:
        raise GuardError(f"broker {settings.host}:{settings.port} refused the connection: {got['no_connection']}")
    return got
