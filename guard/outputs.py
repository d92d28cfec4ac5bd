"""What the gate shows and says besides releases: the LED (a ringing timer shows over it), the chimes, each
event to MQTT, ESPHome and the caller, and the hubs' playback hold.

The gate decides; this only carries its word to every part that shows it, so the gate names no hardware.
"""

from collections.abc import Callable

from guard.esphome import EsphomeServer
from guard.hardware import Apa102Leds, StatusLed, UsbRing
from guard.mqtt import MqttLink
from guard.satellite import AssistSatellite
from guard.sound import Chimes
from guard.timers import Ringer, Timers
from guard.vocabulary import Event, LedPattern


class Outputs:
    """The gate's `publish`, `show` and `hold_playback`, and its timers' ring, fanned out to the parts present."""

    def __init__(self, publish: Callable[[Event], None], led: StatusLed | Apa102Leds | UsbRing | None,
                 chimes: Chimes | None, mqtt: MqttLink | None, satellite: AssistSatellite | None,
                 esphome: EsphomeServer | None, ringer: Ringer | None, clock: Callable[[], float]) -> None:
        self._publish, self.led, self.chimes, self.ringer = publish, led, chimes, ringer
        self.mqtt, self.satellite, self.esphome = mqtt, satellite, esphome
        self.pattern = LedPattern.IDLE  # what the gate wants the LED to show (a ring shows over it)
        self.timers = Timers(self.ring, clock)

    def publish(self, event: Event) -> None:
        if self.chimes is not None:
            self.chimes.play(event.kind, event.utterance)
        self._publish(event)
        if self.mqtt is not None:
            self.mqtt.event(event)
        if self.esphome is not None:
            self.esphome.show(event.state)

    def show(self, pattern: LedPattern) -> None:
        self.pattern = pattern
        if self.led is not None and not self.timers.ringing:
            self.led.show(pattern)

    def hold_playback(self, held: bool) -> None:
        """Nothing from a hub plays while held (the gate decides when: a spoken confirmation may follow)."""
        for hub in (self.satellite, self.esphome):
            if hub is not None:
                (hub.playback_held.set if held else hub.playback_held.clear)()

    def ring(self, on: bool) -> None:
        """A finished timer rings (on), or its ring stopped: the LED shows it over the gate's pattern."""
        if self.led is not None:
            self.led.show(LedPattern.TIMER if on else self.pattern)
        if self.ringer is not None:
            (self.ringer.start if on else self.ringer.stop)()

    def close(self) -> None:
        """At exit: the ring stops, the chimes and the LED are let go (the speaker itself is the caller's)."""
        if self.ringer is not None:
            self.ringer.stop()
        if self.chimes is not None:
            self.chimes.close()
        if self.led is not None:
            self.led.close()
