"""Home Assistant's own ESPHome Assist satellite code (`esphome.assist_satellite.EsphomeAssistSatellite`, HA 2024.10
on) as a guard's client, over aioesphomeapi with the owner's key, as Home Assistant's ESPHome integration uses it.

Run by Home Assistant's own Python (.venv-ha on Python 3.13). Stood in for, as in home_assistant_satellite.py: the
Assist pipeline (it keeps what HA's satellite code hands it: OUT/runs.jsonl, OUT/run-N.raw) and the parts of a
running Home Assistant the entity reaches for (its config entry's tasks, the registries, its state, the
integration's runtime data, which here holds only the connected client and the device's info).

    python tests/home_assistant_esphome.py HOST PORT KEY OUT

Touches OUT/imported once Home Assistant's code is loaded (the guard may start then: the client retries until it
listens) and OUT/ready once subscribed to the voice assistant.
"""

import asyncio
import sys
import types
from pathlib import Path

from aioesphomeapi import APIClient, APIConnectionError
from home_assistant_satellite import _stand_in_pipeline
from homeassistant.components.esphome import assist_satellite
from homeassistant.components.esphome.assist_satellite import EsphomeAssistSatellite
from homeassistant.core import HomeAssistant


async def main(host: str, port: int, key: str, out: Path) -> None:
    _stand_in_pipeline(out, None)
    hass = HomeAssistant(str(out / "config"))
    (out / "imported").touch()
    client = APIClient(host, port, None, noise_psk=key)
    for _ in range(300):
        try:
            await client.connect(login=True)
            break
        except APIConnectionError:  # not listening yet
            await asyncio.sleep(0.2)
    else:
        sys.exit(f"{host}:{port} never listened")
    entry = types.SimpleNamespace(
        async_create_background_task=lambda hass, target, name: hass.async_create_background_task(target, name))
    entry_data = types.SimpleNamespace(
        client=client, device_info=await client.device_info(), api_version=client.api_version,
        media_player_formats={}, async_set_assist_pipeline_state=lambda running: None,
        async_subscribe_assist_pipeline_update=lambda update: lambda: None,
        async_register_assist_satellite_set_wake_word_callback=lambda choose: lambda: None,
        async_assist_satellite_config_updated=lambda config: None)
    assist_satellite.async_register_timer_handler = lambda hass, device_id, handler: lambda: None
    satellite = EsphomeAssistSatellite(entry, entry_data)
    satellite.hass, satellite.entity_id = hass, "assist_satellite.guard"
    satellite.platform = types.SimpleNamespace(config_entry=entry)
    satellite.registry_entry = types.SimpleNamespace(device_id="guard")
    satellite.async_write_ha_state = lambda: None
    satellite._resolve_pipeline = lambda: None  # the preferred pipeline, with no select entity registered
    satellite._resolve_vad_sensitivity = lambda: 1.0
    await satellite.async_added_to_hass()
    (out / "ready").touch()
    await asyncio.Event().wait()  # serves until the test ends it


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])))
