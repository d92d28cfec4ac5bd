"""The consent button and the status LED, through gpiozero; the only gpiozero user.

Callbacks here only post the button's moves to the daemon's inbox; the gate decides
what a press means.
"""

import logging
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

from gpiozero import LED, PWMLED, RGBLED, Button, Device, SPIDevice
from gpiozero.exc import BadPinFactory, GPIOZeroError

from guard.config import GpioConfig
from guard.errors import DeviceError
from guard.inbox import ButtonMove
from guard.vocabulary import LedPattern

log = logging.getLogger(__name__)

# on/off seconds per pattern for a one-colour LED; None is off, () is steady on.
PATTERNS: dict[LedPattern, tuple[float, float] | tuple | None] = {
    LedPattern.IDLE: None,
    LedPattern.CAPTURING: (0.5, 0.5),
    LedPattern.PENDING: (0.15, 0.15),
    LedPattern.PENDING_VOICE: (0.45, 0.15),  # mostly on: also listening for the spoken confirmation
    LedPattern.MUTED: (),
    LedPattern.FAULT: (0.05, 0.95),
    LedPattern.TIMER: (1.0, 0.25),  # long on, short off: unlike any consent pattern
}
COLOURS = {LedPattern.CAPTURING: (0, 0, 1), LedPattern.PENDING: (1, 0.5, 0), LedPattern.PENDING_VOICE: (0, 1, 1),
           LedPattern.MUTED: (1, 0, 0), LedPattern.FAULT: (1, 0, 0), LedPattern.RELEASED: (0, 1, 0),
           LedPattern.TIMER: (1, 1, 1)}
RELEASED_FLASHES = 3


def pin_factory(mode: str):
    """The gpiozero pin factory for --gpio auto|mock: None lets gpiozero find the Pi's own (lgpio)."""
    if mode == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        return MockFactory(pin_class=MockPWMPin)
    return None


def _device(make: Callable, what: str, fix: str):
    """Create a gpiozero device, turning its errors into one line with a way forward."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gpiozero warns once per factory it falls back from
            return make()
    except BadPinFactory:
        raise DeviceError("no GPIO here (not a Raspberry Pi, or lgpio missing); "
                          "try --gpio mock to simulate, or --gpio none") from None
    except GPIOZeroError as e:
        raise DeviceError(f"{what}: {e}; {fix}") from None


class ConsentButton:
    """A momentary push button: the local act of consent, and a long press to mute.

    Wiring: one leg to a BCM pin (default 17, physical pin 11), the other to GND
    (physical pin 9); the internal pull-up does the rest.

        button = ConsentButton(GpioConfig(), post=lambda move: ..., factory=pin_factory("auto"))

    Args:
        settings: the [gpio] table (pin, pull, bounce, long-press seconds).
        post: called with each ButtonMove from gpiozero's threads; it must not block or raise.
        factory: gpiozero pin factory (MockFactory in tests).
    """

    def __init__(self, settings: GpioConfig, post: Callable[[ButtonMove], None], factory) -> None:
        self._button = _device(lambda: Button(
            settings.button_pin, pull_up=settings.button_pull_up, bounce_time=settings.bounce_seconds or None,
            hold_time=settings.long_press_seconds, pin_factory=factory),
            f"button on GPIO{settings.button_pin}", "fix [gpio] button_pin")
        self._button.when_pressed = lambda: post(ButtonMove.DOWN)
        self._button.when_released = lambda: post(ButtonMove.UP)
        self._button.when_held = lambda: post(ButtonMove.HELD)

    def close(self) -> None:
        self._button.close()


def spi_problem(gpio: GpioConfig, dev: Path = Path("/dev")) -> str | None:
    """Why the APA102 LEDs could not be driven here, with the fix; None when their SPI device is usable."""
    if gpio.led_type != "apa102":
        return None
    node = dev / f"spidev{gpio.spi_bus}.{gpio.spi_device}"
    if not node.exists():
        return (f'[gpio] led_type = "apa102": {node} is missing; enable SPI: add dtparam=spi=on to '
                "/boot/firmware/config.txt and reboot (or check [gpio] spi_bus and spi_device)")
    if not os.access(node, os.R_OK | os.W_OK):
        return (f'[gpio] led_type = "apa102": {node} is not usable by this user; add it to the spi group: '
                "sudo usermod -aG spi $USER (then log in again)")
    return None


class _Spi(SPIDevice):
    """gpiozero's SPI interface (hardware SPI through lgpio on a Pi; bit-banged mock pins in tests)."""

    def __init__(self, port: int, device: int, pin_factory) -> None:
        # gpiozero's software SPI bus (the mock's) asks for a default factory without passing its own on;
        # lend it ours for the moment it is built, so that --gpio mock needs no Pi
        lent = pin_factory is not None and Device.pin_factory is None
        if lent:
            Device.pin_factory = pin_factory
        try:
            super().__init__(port=port, device=device, pin_factory=pin_factory)
        finally:
            if lent:
                Device.pin_factory = None

    def write(self, data: bytes) -> None:
        self._spi.transfer(list(data))


def apa102_frame(colour: tuple[float, float, float], count: int, brightness: int) -> bytes:
    """What the LEDs are sent to show one colour (red, green, blue in 0-1): a start frame of four zero bytes,
    then per LED 0xE0 | brightness (5 bits), blue, green, red, then an end frame of 0xFF bytes (one per
    16 LEDs, at least four)."""
    red, green, blue = (round(255 * c) for c in colour)
    led = bytes((0xE0 | brightness, blue, green, red)) if any(colour) else bytes((0xE0, 0, 0, 0))
    return bytes(4) + led * count + b"\xff" * max(4, (count + 15) // 16)


class ColourLights:
    """LEDs that take a colour as data (a HAT's APA102s, a USB array's ring): each pattern shows in its colour,
    blinking with a single LED's timings, in a thread of its own. Subclasses say how a colour is sent."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._blinker: threading.Thread | None = None
        self.showing = LedPattern.IDLE

    def light(self, colour: tuple[float, float, float]) -> None:
        raise NotImplementedError

    def show(self, state: LedPattern) -> None:
        self._stop_blinking()
        self.showing = state
        colour = COLOURS.get(state, (0, 0, 0))
        self.light(colour)
        timing = (0.05, 0.05) if state is LedPattern.RELEASED else PATTERNS.get(state)
        if timing:  # blinking: on, off, on, ... in a thread; steady (()) and dark (None) need no thread
            flashes = RELEASED_FLASHES if state is LedPattern.RELEASED else None
            self._stop.clear()
            self._blinker = threading.Thread(target=self._blink, args=(colour, timing, flashes), daemon=True)
            self._blinker.start()

    def _blink(self, colour: tuple[float, float, float], timing: tuple[float, float], flashes: int | None) -> None:
        on_seconds, off_seconds = timing
        done = 0
        while not self._stop.wait(on_seconds):
            self.light((0, 0, 0))
            done += 1
            if flashes is not None and done >= flashes or self._stop.wait(off_seconds):
                return
            self.light(colour)

    def _stop_blinking(self) -> None:
        self._stop.set()
        if self._blinker is not None:
            self._blinker.join(2)
            self._blinker = None

    def close(self) -> None:
        self._stop_blinking()
        self.light((0, 0, 0))


class Apa102Leds(ColourLights):
    """The APA102 LEDs of a ReSpeaker 2-Mic (3) or 4-Mic (12) HAT, on SPI: every LED shows the pattern's colour.

    Args:
        settings: the [gpio] table (led_count, led_brightness, spi_bus, spi_device, led_power_pin).
        factory: gpiozero pin factory.
    """

    def __init__(self, settings: GpioConfig, factory) -> None:
        super().__init__()
        self.count, self.brightness = settings.led_count, settings.led_brightness
        where = f"/dev/spidev{settings.spi_bus}.{settings.spi_device}"
        self._spi = _device(lambda: _Spi(port=settings.spi_bus, device=settings.spi_device, pin_factory=factory),
                            f"APA102 LEDs on {where}", "enable SPI (dtparam=spi=on in config.txt) and check "
                            "[gpio] spi_bus and spi_device")
        self._power = None
        if settings.led_power_pin >= 0:
            self._power = _device(lambda: LED(settings.led_power_pin, pin_factory=factory),
                                  f"LED power on GPIO{settings.led_power_pin}", "fix [gpio] led_power_pin")
            self._power.on()
        self.light((0, 0, 0))

    def light(self, colour: tuple[float, float, float]) -> None:
        self._spi.write(apa102_frame(colour, self.count, self.brightness))

    def close(self) -> None:
        super().close()
        self._spi.close()
        if self._power is not None:
            self._power.close()


RESPEAKER_USB = (0x2886, 0x0018)  # ReSpeaker USB Mic Array v2.0 (USB vendor, product)
RING_MONO, RING_BRIGHTNESS = 0x01, 0x20  # its vendor requests: one colour on all 12 LEDs; brightness 0-31
RING_REQUEST_TYPE = 0x40  # host to device, vendor, recipient device
RING_INDEX = 0x1C
RING_TIMEOUT_MS = 1000


def usb_ring_problem(gpio: GpioConfig, backend=None) -> str | None:
    """Why the USB array's ring could not be driven here, with the fix; None when it is there."""
    if gpio.led_type != "usb-ring":
        return None
    import usb.core

    try:
        found = usb.core.find(idVendor=RESPEAKER_USB[0], idProduct=RESPEAKER_USB[1], backend=backend)
    except usb.core.NoBackendError:
        return '[gpio] led_type = "usb-ring": no libusb here; install it: sudo apt-get install libusb-1.0-0'
    if found is None:
        return ('[gpio] led_type = "usb-ring": no ReSpeaker USB Mic Array v2.0 (USB 2886:0018) is plugged in; '
                "plug it in, or choose another [gpio] led_type")
    return None


class UsbRing(ColourLights):
    """The 12-LED ring of a ReSpeaker USB Mic Array v2.0, driven by its USB vendor requests (found by its USB
    id): the whole ring shows the pattern's colour.

    Args:
        settings: the [gpio] table (led_brightness).
        backend: pyusb's backend (libusb on a Pi; a stand-in in tests).
    """

    def __init__(self, settings: GpioConfig, backend=None) -> None:
        super().__init__()
        problem = usb_ring_problem(settings, backend)
        if problem:
            raise DeviceError(problem)
        import usb.core

        self._usb_error = usb.core.USBError
        self._device = usb.core.find(idVendor=RESPEAKER_USB[0], idProduct=RESPEAKER_USB[1], backend=backend)
        self._send(RING_BRIGHTNESS, [settings.led_brightness])
        self.light((0, 0, 0))

    def light(self, colour: tuple[float, float, float]) -> None:
        self._send(RING_MONO, [*(round(255 * c) for c in colour), 0])

    def _send(self, request: int, data: list[int]) -> None:
        try:
            self._device.ctrl_transfer(RING_REQUEST_TYPE, 0, request, RING_INDEX, data, RING_TIMEOUT_MS)
        except self._usb_error as e:  # unplugged, or no permission: the LED is news, never a reason to stop
            log.warning("ReSpeaker USB ring not updated (%s); if it is permission, install "
                        "firmware_config/udev/99-guard-gpio.rules", e)


class StatusLed:
    """The LED that tells the room what the guard is doing; pending blinks fast.

    Wiring: BCM pin (default 27, physical pin 13) -> 330 ohm resistor -> LED
    anode; cathode to GND. An RGB LED takes three pins (red, green, blue).

    Args:
        settings: the [gpio] table (led_type plain|pwm|rgb, led_pins, active-high).
        factory: gpiozero pin factory.
    """

    def __init__(self, settings: GpioConfig, factory) -> None:
        kind, pins, high = settings.led_type, settings.led_pins, settings.led_active_high
        cls = {"rgb": RGBLED, "pwm": PWMLED, "plain": LED}[kind]
        self._led = _device(lambda: cls(*pins, active_high=high, pin_factory=factory),
                            f"{kind} LED on GPIO{list(pins)}", "fix [gpio] led_pins")
        self.kind = kind
        self.showing = LedPattern.IDLE

    def show(self, state: LedPattern) -> None:
        """Switch to the pattern for `state` (the released flash ends dark)."""
        self.showing = state
        if self.kind == "rgb":
            self._show_rgb(state)
        elif state is LedPattern.RELEASED:
            self._led.blink(0.05, 0.05, n=RELEASED_FLASHES)
        else:
            pattern = PATTERNS[state]
            if pattern is None:
                self._led.off()
            elif pattern == ():
                self._led.on()
            else:
                self._led.blink(*pattern)

    def _show_rgb(self, state: LedPattern) -> None:
        colour = COLOURS.get(state)
        if colour is None:
            self._led.off()
        elif state is LedPattern.RELEASED:
            self._led.blink(0.05, 0.05, on_color=colour, n=RELEASED_FLASHES)
        elif PATTERNS[state] == ():
            self._led.color = colour
        else:
            self._led.blink(*PATTERNS[state], on_color=colour)

    def close(self) -> None:
        self._led.close()
