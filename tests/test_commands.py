"""Remote commands, parsed: the README's four verbs and nothing else, for this device only.

The expected verbs are written out here, not taken from `commands.VERBS`: a verb
added to the module must fail these tests until the README and this list say so.
"""

import json

import pytest

from guard.commands import MAX_COMMAND_BYTES, CommandError, parse_command

DEVICE = "kitchen"
CMD = f"guard/{DEVICE}/cmd/"
DOCUMENTED = {"mute", "unmute", "cancel", "wipe"}


@pytest.mark.parametrize("verb", sorted(DOCUMENTED))
def test_each_documented_verb(verb):
    assert parse_command(CMD + verb, b"", DEVICE) == ("remote", verb)
    assert parse_command(CMD + verb, b"PRESS", DEVICE) == ("remote", verb)  # Home Assistant's buttons send PRESS


@pytest.mark.parametrize("verb", ["release", "send", "confirm", "sink", "unmute_button", "Mute", "mute/", "",
                                  "mute\x00", "../release", "remote_mute/extra"])
def test_anything_else_under_cmd_is_refused(verb):
    with pytest.raises(CommandError, match="unknown command"):
        parse_command(CMD + verb, b"", DEVICE)


@pytest.mark.parametrize(("payload", "verb"), [(b"ON", "mute"), (b"OFF", "unmute"), (b" on \n", "mute"),
                                               (b"off", "unmute")])
def test_home_assistants_switch(payload, verb):
    assert parse_command(CMD + "remote_mute", payload, DEVICE) == ("remote", verb)


@pytest.mark.parametrize("payload", [b"", b"TRUE", b"1", b"ONN", b"\xff\xfe", b"release"])
def test_the_switch_takes_only_on_or_off(payload):
    with pytest.raises(CommandError, match="remote_mute takes ON or OFF"):
        parse_command(CMD + "remote_mute", payload, DEVICE)


def test_oversized_payloads_are_refused_at_the_limit():
    assert parse_command(CMD + "mute", b"x" * MAX_COMMAND_BYTES, DEVICE) == ("remote", "mute")
    with pytest.raises(CommandError, match=f"payload of {MAX_COMMAND_BYTES + 1} bytes"):
        parse_command(CMD + "mute", b"x" * (MAX_COMMAND_BYTES + 1), DEVICE)
    assert MAX_COMMAND_BYTES == 1024


@pytest.mark.parametrize("topic", [f"guard/{DEVICE}x/cmd/mute", "guard/other/cmd/mute", f"guard/{DEVICE}/cmd",
                                   f"guard/{DEVICE}/event/muted", "homeassistant/status", "cmd/mute", ""])
def test_messages_for_others_are_not_commands(topic):
    assert parse_command(topic, b"ON", DEVICE) is None


def _hermes(**body) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize(("topic", "verb"), [("hermes/hotword/toggleOff", "mute"),
                                             ("hermes/hotword/toggleOn", "unmute")])
def test_hermes_toggles_for_this_site_are_rhasspys_own(topic, verb):
    """Rhasspy's toggles come as "rhasspy", not "remote": its unmute lifts only a mute that Rhasspy set."""
    assert parse_command(topic, _hermes(siteId=DEVICE), DEVICE) == ("rhasspy", verb)
    assert parse_command(topic, _hermes(siteId=DEVICE, reason=""), DEVICE) == ("rhasspy", verb)
    assert parse_command(topic, _hermes(siteId=DEVICE, reason="someOtherReason"), DEVICE) == ("rhasspy", verb)


@pytest.mark.parametrize("reason", ["dialogueSession", "playAudio", "ttsSay"])
def test_rhasspys_own_pauses_are_not_privacy_mutes(reason):
    for topic in ("hermes/hotword/toggleOff", "hermes/hotword/toggleOn"):
        assert parse_command(topic, _hermes(siteId=DEVICE, reason=reason), DEVICE) is None


@pytest.mark.parametrize("body", [{"siteId": "livingroom"}, {}, {"siteId": None}, {"siteId": DEVICE + " "}])
def test_hermes_toggles_for_other_sites_are_ignored(body):
    assert parse_command("hermes/hotword/toggleOff", _hermes(**body), DEVICE) is None


@pytest.mark.parametrize("payload", [b"", b"not json", b"[1, 2]", b'"text"', b"[" * 1000, b"\xff"])
def test_malformed_hermes_payloads_are_refused(payload):
    with pytest.raises(CommandError, match="payload is not a JSON object|over"):
        parse_command("hermes/hotword/toggleOff", payload, DEVICE)


def test_other_hermes_topics_are_not_commands():
    assert parse_command("hermes/hotword/default/detected", _hermes(siteId=DEVICE), DEVICE) is None
    assert parse_command("hermes/hotword/toggleOffx", _hermes(siteId=DEVICE), DEVICE) is None


def test_refusals_quote_at_most_a_little_of_what_arrived():
    with pytest.raises(CommandError) as refused:
        parse_command(CMD + "remote_mute", b"A" * 500, DEVICE)
    assert str(refused.value) == f"remote_mute takes ON or OFF, not {'A' * 20!r}"
    with pytest.raises(CommandError) as refused:
        parse_command(CMD + "v" * 500, b"", DEVICE)
    assert str(refused.value).startswith(f"unknown command {'v' * 40!r}; known: mute, unmute, cancel, wipe")
