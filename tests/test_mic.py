"""The real pyaudio -> PortAudio -> ALSA capture path, fed by an ALSA `file` PCM instead of a sound card."""

import json

import numpy as np
import pytest
import speech
from conftest import alsa_home, run_guard


def _live(tmp_path, samples: np.ndarray, audio_config: str) -> dict[str, str]:
    raw = tmp_path / "capture.raw"
    raw.write_bytes(samples.astype("<i2").tobytes())
    env = alsa_home(tmp_path / "home", raw)
    config = tmp_path / "guard.toml"
    config.write_text(f'[audio]\ndevice = "guardtest"\n{audio_config}\n[wake]\nmodels = ["alexa", "hey_jarvis"]\n')
    return {**env, "GUARD_CONFIG": str(config)}


def test_devices_lists_the_capture_device_with_its_rates(tmp_path):
    env = alsa_home(tmp_path / "home", tmp_path / "empty.raw")
    (tmp_path / "empty.raw").write_bytes(b"")
    result = run_guard("devices", "--json", env=env)
    assert result.returncode == 0, result.stderr
    devices = [json.loads(line) for line in result.stdout.splitlines()]
    test_pcm, = [d for d in devices if d["name"] == "guardtest"]
    assert test_pcm["channels"] >= 2 and 16000 in test_pcm["rates_hz"]
    assert "ALSA lib" not in result.stderr


def test_listen_hears_the_wake_word_through_portaudio(tmp_path, alexa_samples):
    env = _live(tmp_path, np.concatenate([alexa_samples, speech.silence(2)]), "")
    result = run_guard("listen", "--seconds", "4", env=env)
    assert result.returncode == 0, result.stderr
    assert "listening on guardtest at 16000 Hz" in result.stderr
    assert len(result.stdout.splitlines()) == 1 and " alexa (score " in result.stdout


@pytest.mark.parametrize("channel", [0, 1])
def test_a_48_khz_array_channel_is_picked_and_resampled(tmp_path, channel):
    jarvis = speech.say("hey Jarvis", "en+f4")
    at_48k = np.repeat(np.concatenate([speech.silence(0.5), jarvis, speech.silence(2)]), 3)  # crude 3x upsampling
    stereo = np.zeros((len(at_48k), 2), np.int16)
    stereo[:, 1] = at_48k
    env = _live(tmp_path, stereo.reshape(-1), f"channels = 2\nchannel = {channel}\nrate_hz = 48000\n")
    result = run_guard("listen", "--seconds", "4", env=env)
    assert result.returncode == 0, result.stderr
    assert "at 48000 Hz" in result.stderr
    heard = [line.split()[1] for line in result.stdout.splitlines()]
    assert heard == (["hey_jarvis"] if channel == 1 else [])


def test_a_missing_microphone_is_named_with_a_way_forward(tmp_path):
    env = _live(tmp_path, speech.silence(1), "")
    env["GUARD_CONFIG"] = str(tmp_path / "other.toml")
    (tmp_path / "other.toml").write_text('[audio]\ndevice = "ReSpeaker"\n')
    result = run_guard("listen", "--seconds", "1", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("guard: error: no input device matches 'ReSpeaker'; `guard devices` lists them")
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_usb_arrays_6_channel_firmware_is_named_and_its_processed_channel_0_is_opened_by_default(tmp_path):
    """The ReSpeaker USB Mic Array v2.0 with its 6-channel firmware (card ArrayUAC10): `guard devices` names it
    with its config lines, and with [audio] channels and channel left alone the guard keeps channel 0 (the
    processed beam), not a mix of the raw microphones."""
    jarvis = np.concatenate([speech.silence(0.5), speech.say("hey Jarvis", "en+f4"), speech.silence(2)])
    alexa = np.concatenate([speech.silence(0.5), speech.say("Alexa"), speech.silence(2)])[:len(jarvis)]
    six = np.zeros((len(jarvis), 6), np.int16)
    six[:, 0] = jarvis
    six[:len(alexa), 1:5] = alexa[:, None]  # the raw microphones hear something else
    raw = tmp_path / "capture.raw"
    raw.write_bytes(six.astype("<i2").tobytes())
    env = alsa_home(tmp_path / "home", raw, pcm="ArrayUAC10")
    listed = run_guard("devices", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "ReSpeaker USB Mic Array v2.0 (6-channel firmware" in listed.stdout and 'led_type = "usb-ring"' in \
        listed.stdout
    (tmp_path / "guard.toml").write_text('[audio]\ndevice = "ArrayUAC10"\n[wake]\nmodels = ["alexa", "hey_jarvis"]\n')
    result = run_guard("listen", "--seconds", "4", env={**env, "GUARD_CONFIG": str(tmp_path / "guard.toml")})
    assert result.returncode == 0, result.stderr
    assert "opening 6 channels and keeping channel 0" in result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["hey_jarvis"]
