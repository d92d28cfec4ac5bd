"""WAV files: the header of any PCM or float WAV read without its audio, a file streamed as frames,
and the one WAV a release is encoded as (16 kHz mono 16-bit, in a bytearray the gate zeroes)."""

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guard.dsp import RATE_HZ, Converter
from guard.errors import AudioInputError

WAV_HEADER_BYTES = 44  # of the WAVs encode_wav writes
_PCM_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


@dataclass(frozen=True)
class WavFormat:
    """What a WAV header says about its samples."""

    rate_hz: int
    channels: int
    sample_bytes: int
    is_float: bool
    data_offset: int
    data_bytes: int

    @property
    def duration_seconds(self) -> float:
        return self.data_bytes / (self.sample_bytes * self.channels) / self.rate_hz


def _read_chunks(f) -> Iterator[tuple[bytes, int, int]]:
    """Yield (id, offset of body, size) for each RIFF chunk."""
    f.seek(12)
    while True:
        head = f.read(8)
        if len(head) < 8:
            return
        chunk_id, size = struct.unpack("<4sI", head)
        offset = f.tell()
        yield chunk_id, offset, size
        f.seek(offset + size + (size & 1))


def _parse_fmt(body: bytes, path: Path) -> tuple[int, int, int, bool]:
    if len(body) < 16:
        raise AudioInputError(f"{path}: WAV fmt chunk is truncated")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == 0xFFFE and len(body) >= 40:
        sub = body[24:40]
        tag = struct.unpack("<H", sub[:2])[0] if sub[2:] == _PCM_GUID_TAIL else -1
    if tag not in (1, 3):
        raise AudioInputError(f"{path}: WAV encoding {tag:#x} is not PCM or float; convert it: "
                              "sox IN.wav -b 16 -e signed OUT.wav")
    is_float = tag == 3
    if (is_float and bits not in (32, 64)) or (not is_float and bits not in (8, 16, 24, 32)):
        raise AudioInputError(f"{path}: {bits}-bit {'float' if is_float else 'PCM'} WAV is not supported")
    if channels < 1 or rate < 1000:
        raise AudioInputError(f"{path}: WAV header says {channels} channels at {rate} Hz")
    return rate, channels, bits // 8, is_float


def read_wav_format(path: Path) -> WavFormat:
    """Parse a WAV header, including WAVE_FORMAT_EXTENSIBLE, without reading the audio."""
    try:
        with path.open("rb") as f:
            riff = f.read(12)
            if len(riff) == 0:
                raise AudioInputError(f"{path}: file is empty, not a WAV file")
            if len(riff) < 12 or riff[:4] not in (b"RIFF", b"RF64") or riff[8:12] != b"WAVE":
                raise AudioInputError(f"{path}: not a WAV file (no RIFF/WAVE header)")
            fmt = None
            file_bytes = os.fstat(f.fileno()).st_size
            for chunk_id, offset, size in _read_chunks(f):
                if chunk_id == b"fmt ":
                    f.seek(offset)
                    fmt = _parse_fmt(f.read(size), path)
                elif chunk_id == b"data":
                    if fmt is None:
                        raise AudioInputError(f"{path}: WAV data chunk comes before its fmt chunk")
                    rate, channels, width, is_float = fmt
                    size = min(size, file_bytes - offset)  # streamed WAVs leave the size at 0xFFFFFFFF
                    size -= size % (width * channels)
                    return WavFormat(rate, channels, width, is_float, offset, size)
    except IsADirectoryError:
        raise AudioInputError(f"{path}: is a directory, not a WAV file") from None
    except FileNotFoundError:
        raise AudioInputError(f"{path}: no such file") from None
    except PermissionError:
        raise AudioInputError(f"{path}: permission denied") from None
    raise AudioInputError(f"{path}: WAV file has no {'data' if fmt else 'fmt'} chunk")


def decode_samples(data: bytes, fmt: WavFormat) -> np.ndarray:
    """Bytes to float32 in int16 scale, shape [frames, channels]."""
    if fmt.is_float:
        raw = np.frombuffer(data, "<f4" if fmt.sample_bytes == 4 else "<f8")
        samples = raw.astype(np.float32) * 32768
    elif fmt.sample_bytes == 1:
        samples = (np.frombuffer(data, np.uint8).astype(np.float32) - 128) * 256
    elif fmt.sample_bytes == 2:
        samples = np.frombuffer(data, "<i2").astype(np.float32)
    elif fmt.sample_bytes == 3:
        b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        samples = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8).astype(np.float32) / 256
    else:
        samples = np.frombuffer(data, "<i4").astype(np.float32) / 65536
    return samples.reshape(-1, fmt.channels)


class WavSource:
    """A WAV file of any PCM or float format, streamed as 16 kHz mono frames.

    Args:
        path: the file.
        channel: which channel to keep (0-based), or None to mix them all.
    """

    BLOCK_SECONDS = 0.5

    def __init__(self, path: Path, channel: int | None = None) -> None:
        self.path = path
        self.format = read_wav_format(path)
        if channel is not None and channel >= self.format.channels:
            raise AudioInputError(f"{path}: has {self.format.channels} channels, no channel {channel}")
        self.converter = Converter(self.format.rate_hz, channel)

    def frames(self) -> Iterator[np.ndarray]:
        """Yield 80 ms int16 frames; the last is padded with silence. Each frame is reused."""
        fmt = self.format
        block_bytes = int(fmt.rate_hz * self.BLOCK_SECONDS) * fmt.sample_bytes * fmt.channels
        remaining = fmt.data_bytes
        with self.path.open("rb") as f:
            f.seek(fmt.data_offset)
            while remaining > 0:
                data = f.read(min(block_bytes, remaining))
                if not data:
                    break
                remaining -= len(data)
                yield from self.converter.push(decode_samples(data, fmt))
        yield from self.converter.flush()

    def wipe(self) -> None:
        self.converter.wipe()

    def close(self) -> None:
        self.wipe()


def encode_wav(samples: np.ndarray) -> bytearray:
    """16 kHz mono 16-bit WAV, in a bytearray the caller zeroes when every sink has it."""
    data_bytes = 2 * len(samples)
    head = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, RATE_HZ, 2 * RATE_HZ, 2, 16) + b"data" + struct.pack("<I", data_bytes)
    wav = bytearray(len(head) + data_bytes)
    wav[:len(head)] = head
    np.frombuffer(wav, "<i2", offset=len(head))[:] = samples  # no intermediate copy of the audio
    return wav
