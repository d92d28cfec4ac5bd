"""The microphone boards people put on a Pi, recognised by the name ALSA gives them: what to open, and the
config lines that light their LEDs. `guard devices` names them; the microphone opens a board's processed
channel by default."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Board:
    """A known board: how its name shows in `guard devices`, what to open, and its LED's config lines."""

    name: str
    marks: tuple[str, ...]  # parts of the ALSA name (card name or id) that identify it
    config: str  # the guard.toml lines for its LEDs and button
    min_channels: int = 1  # the board's firmware that this entry describes shows at least this many
    channels: int = 1  # what to open by default
    channel: int | None = None  # which to keep by default (None: mix)

    def matches(self, device_name: str, input_channels: int) -> bool:
        name = device_name.lower()
        return input_channels >= self.min_channels and any(mark.lower() in name for mark in self.marks)


BOARDS = (
    Board("ReSpeaker USB Mic Array v2.0 (6-channel firmware: channel 0 is the processed beam)",
          ("ReSpeaker 4 Mic Array", "ArrayUAC10"), '[gpio]\nled_type = "usb-ring"', min_channels=6,
          channels=6, channel=0),
    Board("ReSpeaker USB Mic Array v2.0 (1-channel firmware)", ("ReSpeaker 4 Mic Array", "ArrayUAC10"),
          '[gpio]\nled_type = "usb-ring"'),
    Board("ReSpeaker 2-Mic HAT", ("seeed-2mic-voicecard", "seeed2micvoicec"),
          '[gpio]\nled_type = "apa102"  # 3 LEDs; on the HAT\'s v2 also led_power_pin = 12'),
    Board("ReSpeaker 4-Mic HAT", ("seeed-4mic-voicecard", "seeed4micvoicec"),
          '[gpio]\nled_type = "apa102"\nled_count = 12\nled_power_pin = 5'),
)


def recognise(device_name: str, input_channels: int) -> Board | None:
    """The board this capture device is, or None for a microphone the guard knows nothing special of."""
    return next((board for board in BOARDS if board.matches(device_name, input_channels)), None)
