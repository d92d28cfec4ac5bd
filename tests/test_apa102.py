"""The ReSpeaker HATs' APA102 LEDs, at the byte level: gpiozero's own mock SPI (bit-banged over mock pins) carries
every frame to a recording device on the HAT's chip select, as the Pi's SPI would."""

import dataclasses
import time

import numpy as np
import pytest
import speech
from conftest import run_guard
from gpiozero.pins.mock import MockFactory, MockSPIDevice

from guard import config, parts
from guard.assembly import assemble
from guard.config import WakeModelSettings
from guard.daemon import RunOptions
from guard.hardware import COLOURS, PATTERNS, RELEASED_FLASHES, Apa102Leds, apa102_frame, spi_problem
from guard.inbox import ButtonMove, ButtonMoved
from guard.vocabulary import LedPattern, State
from guard.wake import WakeDetector

SELECT_PINS = {0: 8, 1: 7}  # gpiozero's SPI port 0: device 0 selects on GPIO8, device 1 on GPIO7


class LedStrip(MockSPIDevice):
    """The APA102 chain's side of the wire: keeps each transfer (select low to high) as bytes."""

    def __init__(self, factory, device: int = 1) -> None:
        super().__init__(11, 10, 9, SELECT_PINS[device], pin_factory=factory)
        self.frames: list[bytes] = []

    def on_start(self) -> None:
        super().on_start()
        self.frames.append(b"")

    def on_bit(self) -> None:
        if self.rx_bit % 8 == 0:
            self.frames[-1] += bytes([self.rx_word() & 0xFF])
            self.rx_buf = []


@pytest.fixture
def mock_pins():
    """gpiozero's MockFactory with its plain MockPin (the SPI mock's clock pin is one), reset afterwards."""
    made: list[MockFactory] = []

    def new() -> MockFactory:
        made.append(MockFactory())
        return made[-1]

    yield new
    for factory in made:
        factory.reset()


def _hat(mock_pins, **gpio):
    factory = mock_pins()
    strip = LedStrip(factory, gpio.get("spi_device", 1))  # on the wire before the LEDs are driven
    settings = dataclasses.replace(config.GpioConfig(), led_type="apa102", **gpio)
    return Apa102Leds(settings, factory), strip, factory


def _lit(frame: bytes) -> list[tuple[int, int, int, int]]:
    """(brightness word, blue, green, red) per LED of a frame."""
    body = frame[4:]
    return [tuple(body[i:i + 4]) for i in range(0, len(body) - 4, 4) if body[i] & 0xE0 == 0xE0]


def test_a_frame_is_start_then_one_word_per_led_then_end():
    frame = apa102_frame((1, 0.5, 0), 3, 8)
    assert frame == bytes(4) + bytes((0xE8, 0, 128, 255)) * 3 + b"\xff" * 4
    assert apa102_frame((0, 0, 0), 12, 31) == bytes(4) + bytes((0xE0, 0, 0, 0)) * 12 + b"\xff" * 4, "dark: 0 lit"
    assert len(apa102_frame((1, 1, 1), 40, 1)) == 4 + 4 * 40 + 4


@pytest.mark.parametrize("pattern", list(LedPattern))
def test_every_pattern_reaches_the_leds_in_its_colour(mock_pins, pattern):
    leds, strip, _ = _hat(mock_pins)
    try:
        assert strip.frames == [apa102_frame((0, 0, 0), 3, 8)], "dark at start"
        leds.show(pattern)
        assert strip.frames[1] == apa102_frame(COLOURS.get(pattern, (0, 0, 0)), 3, 8), "its colour, at once"
        assert set(strip.frames[1:]) <= {strip.frames[1], apa102_frame((0, 0, 0), 3, 8)}, "then only dark"
    finally:
        leds.close()
    assert strip.frames[-1] == apa102_frame((0, 0, 0), 3, 8), "dark when closed"


def test_pending_blinks_lit_and_dark_at_its_own_pace(mock_pins):
    leds, strip, _ = _hat(mock_pins)
    try:
        leds.show(LedPattern.PENDING)
        time.sleep(1.0)
    finally:
        leds.close()
    lit, dark = apa102_frame(COLOURS[LedPattern.PENDING], 3, 8), apa102_frame((0, 0, 0), 3, 8)
    shown = strip.frames[1:-1]
    assert set(shown) == {lit, dark} and shown[0] == lit
    assert all(a != b for a, b in zip(shown, shown[1:], strict=False)), "lit and dark alternate"
    assert 3 <= len(shown) <= 2 * 1.0 / sum(PATTERNS[LedPattern.PENDING]) + 2


def test_released_flashes_three_times_then_stays_dark(mock_pins):
    leds, strip, _ = _hat(mock_pins)
    try:
        leds.show(LedPattern.RELEASED)
        time.sleep(0.6)
        flashes = [f for f in strip.frames[1:] if f == apa102_frame(COLOURS[LedPattern.RELEASED], 3, 8)]
        assert len(flashes) == RELEASED_FLASHES and strip.frames[-1] == apa102_frame((0, 0, 0), 3, 8)
    finally:
        leds.close()


def test_the_4mic_hat_has_twelve_leds_its_brightness_and_power_pin(mock_pins):
    leds, strip, factory = _hat(mock_pins, led_count=12, led_brightness=31, led_power_pin=5)
    try:
        assert factory.pin(5).state, "the 4-Mic HAT's LED power is switched on"
        leds.show(LedPattern.MUTED)
        assert _lit(strip.frames[-1]) == [(0xFF, 0, 0, 255)] * 12
    finally:
        leds.close()


def test_a_release_still_needs_the_press_while_the_ring_shows_pending(tmp_path, mock_pins, monkeypatch):
    """The pattern is shown before the consent window opens, as with the GPIO LED: a press during capture is not
    consent, the LEDs say pending, and only a press after that releases."""


    wav = speech.write_wav(tmp_path / "quiet.wav", speech.silence(2))
    (tmp_path / "sink").mkdir()
    cfg = config.Config(audit=config.AuditConfig(str(tmp_path / "audit.jsonl")),
                        gpio=dataclasses.replace(config.GpioConfig(), led_type="apa102"),
                        sinks={"box": config.SinkConfig(path=str(tmp_path / "sink"))})
    factory = mock_pins()
    strip = LedStrip(factory)
    monkeypatch.setattr(parts, "pin_factory", lambda mode: factory)  # the mock, with the strip on its wire
    daemon = assemble(cfg, RunOptions(str(wav), "mock", fast=True), WakeDetector([WakeModelSettings("alexa")]))
    daemon.audit.open()
    try:
        audio = speech.frames(np.concatenate([
            speech.silence(1.0), speech.say("Alexa"), speech.silence(0.3), speech.say("what time is it"),
            speech.silence(1.6)]))
        pressed_while_capturing = False
        for frame in audio:
            daemon.audio.post(frame.copy())
            daemon.step()
            if daemon.gate.state is State.CAPTURING and not pressed_while_capturing:
                for move in (ButtonMove.DOWN, ButtonMove.UP):
                    daemon.inbox.post(ButtonMoved(move, daemon.clock()))
                    daemon.step()
                pressed_while_capturing = True
        assert daemon.gate.state is State.PENDING and pressed_while_capturing
        assert apa102_frame(COLOURS[LedPattern.PENDING], 3, 8) in strip.frames, "the LEDs say pending"
        daemon.clock.seconds += 0.5
        for move in (ButtonMove.DOWN, ButtonMove.UP):
            daemon.inbox.post(ButtonMoved(move, daemon.clock()))
            daemon.step()
            daemon.clock.seconds += 0.1
        assert daemon.gate.state is State.IDLE
    finally:
        daemon.outputs.led.close()
        daemon.audit.close()


def test_config_check_explains_a_missing_or_locked_spi_device_with_the_fix(tmp_path):
    gpio = dataclasses.replace(config.GpioConfig(), led_type="apa102")
    assert spi_problem(gpio, tmp_path) == (
        f'[gpio] led_type = "apa102": {tmp_path}/spidev0.1 is missing; enable SPI: add dtparam=spi=on to '
        "/boot/firmware/config.txt and reboot (or check [gpio] spi_bus and spi_device)")
    (tmp_path / "spidev0.1").touch(mode=0o600)
    assert spi_problem(gpio, tmp_path) is None
    assert spi_problem(config.GpioConfig(), tmp_path / "nowhere") is None, "a GPIO LED needs no SPI"


def test_guard_config_check_says_it_in_one_line_and_exits_2(tmp_path):
    toml = tmp_path / "g.toml"
    toml.write_text('[gpio]\nled_type = "apa102"\nspi_bus = 5\nspi_device = 3\n')
    result = run_guard("--config", str(toml), "config", "check")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        'guard: error: [gpio] led_type = "apa102": /dev/spidev5.3 is missing; enable SPI: add dtparam=spi=on to '
        "/boot/firmware/config.txt and reboot (or check [gpio] spi_bus and spi_device)"]
