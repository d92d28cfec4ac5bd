"""Run by Home Assistant's own Python (a venv with homeassistant installed): validate discovery configs the
way HA's MQTT integration does, and render each value_template against a state payload.

stdin: {"prefix": ..., "messages": {topic: payload}, "states": [state payload, ...]}
stdout: {topic (or topic#component for device discovery): {"error": str} | {"rendered": [value per state]}}

The newest Home Assistant that runs on Python 3.11 is 2024.3, before device-based discovery (2024.11): a
device config is split into one config per component the way HA's documentation describes (shared options
and `dev`/`o` given to each component, `p` naming its platform), and each is validated by 2024.3's schema.
"""

import asyncio
import importlib
import json
import sys


def split_devices(prefix: str, messages: dict) -> dict:
    """Device-based discovery configs as the per-component configs HA makes of them; others as they are."""
    out = {}
    for topic, payload in messages.items():
        if not topic.startswith(f"{prefix}/device/"):
            out[topic] = payload
            continue
        shared = {k: v for k, v in payload.items() if k not in ("dev", "o", "cmps")}
        for key, component in payload["cmps"].items():
            config = {**shared, "device": payload["dev"], "origin": payload["o"],
                      **{k: v for k, v in component.items() if k != "p"}}
            node = topic.split("/")[-2]
            out[f"{prefix}/{component['p']}/{node}/{key}/config#{key}"] = config
    return out


async def main() -> None:
    from homeassistant.components.mqtt import discovery
    from homeassistant.core import HomeAssistant
    from homeassistant.helpers.template import Template

    given = json.load(sys.stdin)
    hass = HomeAssistant("/tmp")
    results = {}
    for topic, payload in split_devices(given["prefix"], given["messages"]).items():
        match = discovery.TOPIC_MATCHER.match(topic.split("#")[0].removeprefix(given["prefix"] + "/"))
        if match is None:
            results[topic] = {"error": "HA ignores this topic: it does not match its discovery pattern"}
            continue
        try:
            discovery.MQTT_ORIGIN_INFO_SCHEMA(payload["origin"])
            module = importlib.import_module(f"homeassistant.components.mqtt.{match.group('component')}")
            config = module.DISCOVERY_SCHEMA(dict(payload))
        except Exception as e:  # voluptuous.Invalid, or an unknown component
            results[topic] = {"error": f"{type(e).__name__}: {e}"}
            continue
        rendered = []
        if "value_template" in config:
            template = Template(payload["value_template"], hass)
            rendered = [template.async_render_with_possible_json_value(json.dumps(s)) for s in given["states"]]
        results[topic] = {"rendered": [str(r) for r in rendered]}
    json.dump(results, sys.stdout)


asyncio.run(main())
