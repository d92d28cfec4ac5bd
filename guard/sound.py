"""What the guard plays: Home Assistant's spoken answers, on the configured output device.

The device is opened for each answer and closed after it, so other programs can use it in between.
Nothing here touches the microphone.
"""

from guard.audio import find_device, portaudio, quiet_stderr
from guard.errors import DeviceError


class Speaker:
    """A PortAudio output device, named by index or part of its name (`guard devices --output`)."""

    def __init__(self, device: str) -> None:
        self._pyaudio, self._pa = portaudio()
        try:
            self.info = find_device(self._pa, device, output=True)
        except BaseException:
            self._pa.terminate()
            raise
        self.name = str(self.info["name"])
        self._stream = None

    def start(self, rate_hz: int, width: int, channels: int) -> None:
        """Open the device for one piece of audio in this format (16-bit PCM is what Home Assistant sends)."""
        self.stop()
        try:
            with quiet_stderr():
                self._stream = self._pa.open(rate=rate_hz, channels=channels, output=True,
                                             format=self._pa.get_format_from_width(width),
                                             output_device_index=int(self.info["index"]))
        except (OSError, ValueError) as e:
            raise DeviceError(f"{self.name}: cannot play {channels} channel(s) of {8 * width}-bit audio at "
                              f"{rate_hz} Hz ({e})") from None

    def write(self, audio: bytes) -> None:
        """Play (blocks until the device has taken it)."""
        if self._stream is not None:
            self._stream.write(audio)

    def stop(self) -> None:
        """Let what was written finish playing, then close the device."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.stop_stream()
            stream.close()

    def close(self) -> None:
        self.stop()
        self._pa.terminate()
