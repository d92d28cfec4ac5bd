"""The consent button and the status LED, through gpiozero; the only gpiozero user.

Callbacks here only post the button's moves to the daemon's inbox; the gate decides
what a press means.
"""

import warnings
from collections.abc import Callable

from gpiozero import LED, PWMLED, RGBLED, Button
from gpiozero.exc import BadPinFactory, GPIOZeroError

from guard.config import GpioConfig
from guard.errors import DeviceError
from guard.inbox import ButtonMove
from guard.vocabulary import LedPattern

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
