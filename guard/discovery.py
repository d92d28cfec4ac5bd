"""Home Assistant's MQTT discovery for a guard: its entities, in either discovery style, and the topics it
announced before (so an id change withdraws the old ones). What is announced only; mqtt.py sends it."""

import logging
from collections.abc import Iterable
from pathlib import Path

from guard import __version__
from guard.config import MqttConfig
from guard.vocabulary import EventKind, State

log = logging.getLogger(__name__)

# the Activity event entity's types (Home Assistant event_types): the gate's words, but "wake_detected"
ACTIVITY_TYPES = {EventKind.WAKE: "wake_detected",
                  **{kind: kind.value for kind in (EventKind.PENDING, EventKind.RELEASED, EventKind.DISCARDED)}}


def messages(settings: MqttConfig, device_id: str) -> dict[str, dict]:
    """Config topic -> payload: one per entity, or one for the device holding them all (discovery_style)."""
    entities = entity_configs(settings, device_id)
    if settings.discovery_style == "entities":
        return entities
    first = next(iter(entities.values()))  # device, origin and availability are the same for all
    components = {config["unique_id"]: {"p": topic.split("/")[-4], **{k: v for k, v in config.items()
                                                                      if k not in ("device", "origin")}}
                  for topic, config in entities.items()}
    return {device_topic(settings, device_id): {"dev": first["device"], "o": first["origin"], "cmps": components}}


def device_topic(settings: MqttConfig, device_id: str) -> str:
    return f"{settings.discovery_prefix}/device/{device_id}/config"


def topics_of_both_styles(settings: MqttConfig, device_id: str) -> set[str]:
    """Every config topic this guard may have announced, whichever discovery_style it used."""
    return set(entity_configs(settings, device_id)) | {device_topic(settings, device_id)}


def entity_configs(settings: MqttConfig, device_id: str) -> dict[str, dict]:
    """Config topic -> payload for every Home Assistant entity of this guard."""
    prefix, node, root = settings.discovery_prefix, device_id, f"guard/{device_id}"
    device = {"identifiers": [f"guard_{node}"], "name": f"pi-guard {node}", "manufacturer": "pi-guard",
              "model": "privacy guard", "sw_version": __version__}
    origin = {"name": "pi-guard", "sw_version": __version__}
    common = {"availability_topic": f"{root}/availability", "device": device, "origin": origin}

    def entity(component: str, key: str, **config) -> tuple[str, dict]:
        # default_entity_id (HA 2025.10+) is "domain.slug"; object_id stopped working in HA 2026.4
        return (f"{prefix}/{component}/{node}/{key}/config",
                {"unique_id": f"guard_{node}_{key}", "default_entity_id": f"{component}.guard_{node}_{key}",
                 **common, **config})

    state = f"{root}/state"
    return dict([
        entity("binary_sensor", State.CAPTURING, name="Capturing", state_topic=state,
               value_template=f"{{{{ 'ON' if value_json.state in ('{State.CAPTURING}', '{State.PENDING}') "
                              "else 'OFF' }}"),
        entity("binary_sensor", State.MUTED, name="Muted", state_topic=state,
               value_template=f"{{{{ 'ON' if value_json.state == '{State.MUTED}' else 'OFF' }}}}"),
        entity("switch", "remote_mute", name="Remote mute", state_topic=state,
               command_topic=f"{root}/cmd/remote_mute", payload_on="ON", payload_off="OFF",
               value_template="{{ 'ON' if value_json.muted_by == 'remote' else 'OFF' }}"),
        entity("button", "cancel", name="Cancel pending", command_topic=f"{root}/cmd/cancel",
               payload_press="PRESS"),
        entity("button", "wipe", name="Wipe buffers", command_topic=f"{root}/cmd/wipe", payload_press="PRESS"),
        entity("event", "activity", name="Activity", state_topic=f"{root}/activity",
               event_types=list(ACTIVITY_TYPES.values())),
        entity("binary_sensor", "problem", name="Problem", state_topic=state, device_class="problem",
               value_template=f"{{{{ 'ON' if value_json.state == '{State.FAULT}' else 'OFF' }}}}"),
        entity("sensor", "last_wake_word", name="Last wake word", state_topic=state,
               value_template="{{ value_json.last_wake.model if value_json.last_wake is defined else none }}",
               entity_category="diagnostic"),
        entity("sensor", "last_wake_score", name="Last wake score", state_topic=state,
               value_template="{{ value_json.last_wake.score if value_json.last_wake is defined else none }}",
               entity_category="diagnostic"),
        entity("sensor", "started", name="Started", state_topic=state, device_class="timestamp",
               value_template="{{ value_json.started }}", entity_category="diagnostic"),
    ])


def earlier(noted: Path | None) -> set[str]:
    """The config topics noted at the last announcement (none if there is no note)."""
    if noted is None:
        return set()
    try:
        return set(noted.read_text().split())
    except OSError:
        return set()


def remember(noted: Path | None, topics: Iterable[str]) -> None:
    """Note the config topics announced, so a later id change can withdraw them."""
    if noted is None:
        return
    try:
        noted.write_text("".join(f"{t}\n" for t in sorted(topics)))
    except OSError as e:
        log.warning("%s: cannot note the discovery topics (%s); a later id change leaves stale entities",
                    noted, e.strerror)
