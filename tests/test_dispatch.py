"""How an inbound message and a frame reach the gate, in-process and fast: the MQTT link's dispatch (paho's
own message objects, no broker) and the daemon's zeroing of every frame copy it handles or drops."""

import time

import numpy as np
import paho.mqtt.client as paho
import pytest
from conftest import serve

from guard import commands, config, hermes, mqtt
from guard.inbox import ButtonMove, ButtonMoved, Command, Delivered, Frame, Inbox, Lane, SourceFailed, Stop
from guard.vocabulary import State

DEVICE = "kitchen"


def _message(topic: bytes | str, payload: bytes = b"") -> paho.MQTTMessage:
    message = paho.MQTTMessage(topic=topic.encode() if isinstance(topic, str) else topic)
    message.payload = payload
    return message


@pytest.fixture
def link():
    heard: list[str] = []
    errors: list[str] = []
    link = mqtt.MqttLink(config.MqttConfig(host="127.0.0.1", discovery=True), DEVICE,
                         lambda by, verb: heard.append(verb if by == "remote" else f"{by} {verb}"), None)
    link.error = errors.append  # what would go out on event/error
    link.heard, link.errors = heard, errors
    return link


def test_each_verb_reaches_the_gate_once(link):
    for verb in ("mute", "unmute", "cancel", "wipe"):
        link.on_message(None, None, _message(f"guard/{DEVICE}/cmd/{verb}"))
    link.on_message(None, None, _message(f"guard/{DEVICE}/cmd/remote_mute", b"ON"))
    assert link.heard == ["mute", "unmute", "cancel", "wipe", "mute"] and link.errors == []


def test_a_refused_message_is_answered_and_never_reaches_the_gate(link):
    link.on_message(None, None, _message(f"guard/{DEVICE}/cmd/release"))
    link.on_message(None, None, _message(b"guard/\xff/cmd/mute"))
    assert link.heard == []
    assert link.errors == ["unknown command 'release'; known: mute, unmute, cancel, wipe, remote_mute",
                           "a message with a topic that is not UTF-8 was refused"]


def test_messages_for_others_are_ignored_silently(link):
    for topic in ("guard/other/cmd/mute", "homeassistant/status", "hermes/hotword/toggleOff"):
        link.on_message(None, None, _message(topic, b"{}" if "hermes" in topic else b"offline"))
    assert link.heard == [] and link.errors == []


def test_home_assistant_coming_online_gets_discovery_at_most_every_10_s(link):
    sent = []
    link.publish_discovery = lambda: sent.append(time.monotonic())
    for payload in (b"offline", b"online!", b"online\n", b""):
        link.on_message(None, None, _message("homeassistant/status", payload))
    assert sent == [], "only exactly 'online' asks for discovery"
    for _ in range(3):
        link.on_message(None, None, _message("homeassistant/status", b"online"))
    link.on_message(None, None, _message("homeassistant/status", b"offline"))
    assert len(sent) == 1
    off = mqtt.MqttLink(config.MqttConfig(host="127.0.0.1", discovery=False), DEVICE, lambda by, verb: None, None)
    off.publish_discovery = lambda: sent.append(0)
    off.on_message(None, None, _message("homeassistant/status", b"online"))
    assert len(sent) == 1, "discovery = false publishes nothing"


def test_commands_over_the_rate_are_counted_once_and_a_mute_always_acts(link):
    for _ in range(commands.COMMANDS_PER_MINUTE + 5):
        link.on_message(None, None, _message(f"guard/{DEVICE}/cmd/cancel"))
    link.on_message(None, None, _message(f"guard/{DEVICE}/cmd/mute"))
    assert link.heard == ["cancel"] * commands.COMMANDS_PER_MINUTE + ["mute"]
    assert link.errors == [f"over {commands.COMMANDS_PER_MINUTE} remote commands a minute: ignoring the excess"]
    link.rate.recent.clear()  # a minute later
    link.on_message(None, None, _message(f"guard/{DEVICE}/cmd/wipe"))
    assert link.heard[-1] == "wipe"
    assert link.errors[-1] == f"5 remote command(s) over {commands.COMMANDS_PER_MINUTE}/min were ignored"
    link.on_message(None, None, _message(f"guard/{DEVICE}/cmd/wipe"))
    assert len(link.errors) == 2, "the excess is reported once"


def test_a_rate_window_is_the_last_minute(link, monkeypatch):
    now = [100.0]  # soon after boot: monotonic time is small
    link.rate.clock = lambda: now[0]

    def command() -> None:
        link.on_message(None, None, _message(f"guard/{DEVICE}/cmd/cancel"))
    command()  # the oldest, at 100 s
    now[0] = 130.0
    for _ in range(commands.COMMANDS_PER_MINUTE - 1):
        command()
    now[0] = 160.0
    command()
    assert len(link.heard) == commands.COMMANDS_PER_MINUTE and len(link.errors) == 1, "60 s on is still the same minute"
    now[0] = 160.001  # the oldest has left the window; the 29 from 130 s have not
    command()
    assert len(link.heard) == commands.COMMANDS_PER_MINUTE + 1
    command()
    assert len(link.heard) == commands.COMMANDS_PER_MINUTE + 1, "the window is full again"
    now[0] = 270.0  # long after all of them (and more than twice the oldest: time, not a remainder)
    command()
    assert len(link.heard) == commands.COMMANDS_PER_MINUTE + 2


def test_a_callback_that_raises_never_stops_the_link(link, caplog):
    def explode(by, verb):
        raise RuntimeError("the gate's queue broke")
    link.on_command = explode
    link.on_message(None, None, _message(f"guard/{DEVICE}/cmd/mute"))  # returns: paho's thread lives
    assert "MQTT on_message failed; the link keeps running" in caplog.text


# -- the daemon ---------------------------------------------------------------------------------------


def _loud(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, 1280).astype(np.int16)


def test_each_frame_copy_is_zeroed_once_the_gate_has_seen_it(daemon):
    frame = _loud(1)
    daemon.audio.post(frame)
    copy = daemon.inbox.peek(Lane.FRAMES)[0].samples
    assert np.array_equal(copy, frame) and copy is not frame and copy.base is not frame
    daemon.step()
    assert not copy.any() and frame.any(), "the loop zeroes its copy, never the reader's frame"


def test_a_frame_is_zeroed_even_when_handling_it_fails(daemon):
    def broken(frame):
        raise RuntimeError("the detector broke")
    daemon.gate.feed = broken
    daemon.audio.post(_loud(2))
    copy = daemon.inbox.peek(Lane.FRAMES)[0].samples
    daemon.step()
    assert not copy.any() and daemon.gate.state is State.FAULT


def test_muting_zeroes_and_drops_every_queued_frame(daemon):
    for seed in range(5):
        daemon.audio.post(_loud(seed))
    queued = [message.samples for message in daemon.inbox.peek(Lane.FRAMES)]
    serve(daemon, Command("remote", "mute"))  # served before the frames, which it drops
    assert daemon.inbox.empty() and not daemon.listening.is_set() and daemon.gate.state is State.MUTED
    assert all(not q.any() for q in queued)
    serve(daemon, Command("remote", "unmute"))
    assert daemon.listening.is_set()


def test_stop_drains_too(daemon):
    """Frames still queued when the guard stops are zeroed on the way out, never served."""
    daemon.audit.close()  # run() opens it itself
    daemon.audio.post(_loud(7))
    queued = daemon.inbox.peek(Lane.FRAMES)[0].samples
    daemon.stop()
    daemon.run()  # asked to stop before it began: it only winds down
    assert daemon.inbox.size(Lane.FRAMES) == 0 and not queued.any()


def test_each_remote_verb_reaches_its_gate_action(daemon):
    serve(daemon, Command("remote", "mute"))
    assert daemon.gate.state is State.MUTED and daemon.gate.muted_by == "remote"
    serve(daemon, Command("remote", "unmute"))
    assert daemon.gate.state is State.IDLE
    calls = []
    daemon.gate.cancel, daemon.gate.wipe = (lambda by: calls.append(("cancel", by))), \
        (lambda by: calls.append(("wipe", by)))
    serve(daemon, Command("remote", "cancel"), Command("rhasspy", "wipe"))
    assert calls == [("cancel", "remote"), ("wipe", "rhasspy")]
    serve(daemon, Command("remote", "release"))
    assert daemon.gate.state is State.FAULT, "a verb the gate has no action for is the loop's fault, never a release"


def test_each_button_move_reaches_the_gate_with_its_time(daemon):
    calls = []
    for name in ("button_down", "button_up", "button_held"):
        setattr(daemon.gate, name, lambda at, name=name: calls.append((name, at)))
    serve(daemon, ButtonMoved(ButtonMove.DOWN, 1.0), ButtonMoved(ButtonMove.UP, 1.5), ButtonMoved(ButtonMove.HELD, 3.0))
    assert calls == [("button_down", 1.0), ("button_up", 1.5), ("button_held", 3.0)]


def test_stop_wakes_a_muted_loop_and_asks_it_to_finish(daemon):
    daemon.listening.clear()
    daemon.stop()
    assert daemon.stopping.is_set() and daemon.listening.is_set()
    assert daemon.inbox.get(0) == Stop()


def test_only_sound_from_a_reopened_microphone_counts_as_its_recovery(daemon):
    daemon.audio.is_mic = True  # the file stands in for a microphone
    failed_generation = 3
    serve(daemon, SourceFailed("PortAudio: device unavailable", failed_generation))
    assert daemon.gate.state is State.FAULT and daemon.audio.down is not None
    serve(daemon, Frame(_loud(3), failed_generation))  # a late frame of the device that failed
    serve(daemon, Frame(_loud(5), failed_generation - 1))  # or of one before it, still queued (moves are served first)
    assert daemon.audio.down is not None, "the failed device's own frames, or older ones, are no recovery"
    serve(daemon, Frame(_loud(4), failed_generation + 1))
    assert daemon.audio.down is None and daemon.gate.state is State.IDLE
    assert daemon.health["audio"] != "failing, retrying: PortAudio: device unavailable"


def test_a_finished_release_leaves_the_list_of_unfinished_ones_and_only_it(daemon, tmp_path):
    from guard.gate import Delivery
    from guard.sinks import DirectorySink, Utterance
    from guard.wav import encode_wav
    folder = tmp_path / "box"
    folder.mkdir()
    first, second = (Delivery(Utterance(u, "20261123T000000Z"), encode_wav(np.full(1600, 1234, np.int16)),
                              [DirectorySink("box", folder, "test")], "button", 0.1, {}) for u in ("u1", "u2"))
    daemon.deliveries.put(first)
    daemon.deliveries.put(second)
    serve(daemon, Delivered(first))
    assert daemon.deliveries.unfinished == [second], "at exit only the second is abandoned and recorded"


def test_invariant7_a_hermes_payload_over_the_limit_is_refused_before_any_json_is_parsed(link, monkeypatch):
    """100 MB of JSON on startListening was parsed in paho's thread (RSS 65 -> 781 MB): now its size refuses it."""
    parsed = []
    monkeypatch.setattr(hermes, "asr_session", lambda payload, device: parsed.append(len(payload)))
    link.settings = config.MqttConfig(host="127.0.0.1", hermes=True)
    big = b'{"siteId": "kitchen", "sessionId": "' + b"x" * (100 * 1024 * 1024) + b'"}'
    link.on_message(None, None, _message("hermes/asr/startListening", big))
    link.on_message(None, None, _message("hermes/hotword/toggleOff", big))
    assert parsed == [] and link.heard == []
    assert link.errors == [f"payload of {len(big)} bytes on 'hermes/asr/startListening' is over 1024"], \
        "refused once per kind; the second is counted, reported with the count when the minute ends"
    link.refusals.close()
    assert link.errors[1] == f"1 more like this in 60 s: payload of {len(big)} bytes on " \
                             "'hermes/hotword/toggleOff' is over 1024"
    link.on_message(None, None, _message("hermes/asr/startListening", b'{"siteId": "kitchen", "sessionId": "s"}'))
    assert parsed == [len(b'{"siteId": "kitchen", "sessionId": "s"}')], "a small one is still read"


def test_invariant7_the_button_is_served_before_any_waiting_network_message(daemon, caplog):
    """However many remote requests and frames wait, the button's move and a mute are taken first; the remote
    lane is bounded and counts what it drops."""
    from guard.inbox import REMOTE_MESSAGES
    for _ in range(REMOTE_MESSAGES + 10):
        daemon.inbox.post(Command("remote", "cancel"))
    daemon.audio.post(_loud(1))
    daemon.inbox.post(ButtonMoved(ButtonMove.HELD, daemon.clock()))
    daemon.inbox.post(Command("remote", "mute"))
    assert daemon.inbox.dropped == 10 and daemon.inbox.size(Lane.REMOTE) == REMOTE_MESSAGES
    first, second = daemon.inbox.get(0), daemon.inbox.get(0)
    assert isinstance(first, ButtonMoved) and first.move is ButtonMove.HELD
    assert second == Command("remote", "mute")
    assert daemon.inbox.get(0) == Command("remote", "cancel")
    daemon.step()
    assert "10 remote request(s) dropped" in caplog.text


def test_unmuting_a_microphone_that_is_still_failing_shows_the_fault_again(daemon):
    """The mute hid the fault; once unmuted, the loop finds the microphone still down and shows it again."""
    daemon.audio.is_mic = True  # the file stands in for a microphone
    serve(daemon, SourceFailed("PortAudio: device unavailable", 1))
    serve(daemon, Command("remote", "mute"))
    assert daemon.gate.state is State.MUTED
    serve(daemon, Command("remote", "unmute"))
    assert daemon.gate.state is State.FAULT and daemon.audio.down == "PortAudio: device unavailable"


def test_only_the_network_lane_is_bounded_and_a_dropped_message_says_so():
    """The button, the guard's own news and audio frames are never dropped, however many wait; a network peer's
    request beyond the bound is refused with False and counted."""
    inbox = Inbox(remote_limit=4)
    for i in range(10):
        assert inbox.post(ButtonMoved(ButtonMove.DOWN, float(i)))
        assert inbox.post(SourceFailed("gone", i))
        assert inbox.post(Frame(np.zeros(1280, np.int16), i))
    assert [inbox.post(Command("remote", "cancel")) for _ in range(6)] == [True] * 4 + [False] * 2
    assert (inbox.size(Lane.URGENT), inbox.size(Lane.LOCAL), inbox.size(Lane.FRAMES)) == (10, 10, 10)
    assert inbox.size(Lane.REMOTE) == 4 and inbox.dropped == 2


def test_the_size_limit_lets_a_command_of_exactly_the_limit_through(link):
    link.on_message(None, None, _message(f"guard/{DEVICE}/cmd/cancel", b"x" * commands.MAX_COMMAND_BYTES))
    link.on_message(None, None, _message(f"guard/{DEVICE}/cmd/wipe", b"x" * (commands.MAX_COMMAND_BYTES + 1)))
    assert link.heard == ["cancel"] and len(link.errors) == 1 and "is over 1024" in link.errors[0]
