"""WAV decoding and resampling to 16 kHz mono frames, checked against sox."""

import subprocess

import numpy as np
import pytest
import speech

from guard.dsp import FRAME_SAMPLES, RATE_HZ, StreamResampler
from guard.errors import AudioInputError
from guard.wav import WavSource


def _tone(freq_hz: float, rate_hz: int, seconds: float = 1.0, amplitude: float = 10000) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _peak_hz(samples: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate_hz)[spectrum.argmax()])


def _frames(path, channel=None) -> np.ndarray:
    return np.concatenate([f.copy() for f in WavSource(path, channel).frames()])


@pytest.mark.parametrize("rate_hz", [8000, 22050, 44100, 48000, 96000])
def test_resampler_keeps_pitch_and_level(rate_hz):
    resampler = StreamResampler(rate_hz)
    out = np.concatenate([resampler.process(_tone(1000, rate_hz, 2.0)), resampler.flush()])
    assert abs(len(out) - 2 * RATE_HZ) <= 1
    middle = out[RATE_HZ // 2: 3 * RATE_HZ // 2]
    assert abs(_peak_hz(middle, RATE_HZ) - 1000) <= 2
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(10000 / np.sqrt(2), rel=0.01)


def test_resampler_removes_what_16_khz_cannot_hold():
    out = StreamResampler(48000).process(_tone(11000, 48000, 2.0))
    rms = np.sqrt(np.mean(out[RATE_HZ // 2:-RATE_HZ // 2] ** 2))
    assert 20 * np.log10(rms / (10000 / np.sqrt(2))) < -40


def test_resampler_in_odd_blocks_equals_one_block():
    tone = _tone(440, 44100, 1.0)
    whole = StreamResampler(44100).process(tone)
    pieces = StreamResampler(44100)
    cuts = np.cumsum([0, 1, 7, 441, 3000, 99, 20000])
    blocks = [pieces.process(tone[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    streamed = np.concatenate(blocks + [pieces.process(tone[cuts[-1]:])])
    assert np.allclose(whole, streamed, atol=1e-2)


def _sox(src, dst, *opts):
    subprocess.run(["sox", str(src), *opts, str(dst)], check=True, capture_output=True)
    return dst


@pytest.mark.parametrize("opts", [
    ["-b", "8", "-e", "unsigned-integer"],
    ["-b", "24"],
    ["-b", "32", "-e", "signed-integer"],
    ["-b", "32", "-e", "floating-point"],
    ["-r", "44100"],
    ["-r", "96000", "-c", "2"],
    ["-r", "48000", "-c", "6", "-b", "24"],  # WAVE_FORMAT_EXTENSIBLE, like a mic array's recording
], ids=lambda o: "_".join(o))
def test_any_pcm_wav_becomes_the_same_16_khz_mono_audio(tmp_path, alexa_wav, opts):
    reference = _frames(alexa_wav).astype(np.float64)
    converted = _frames(_sox(alexa_wav, tmp_path / "in.wav", *opts)).astype(np.float64)
    assert abs(len(converted) - len(reference)) <= FRAME_SAMPLES
    n = min(len(converted), len(reference))
    correlation = np.corrcoef(converted[:n], reference[:n])[0, 1]
    assert correlation > 0.99


def test_channel_choice_keeps_one_channel(tmp_path, alexa_samples):
    left_only = np.stack([alexa_samples, np.zeros_like(alexa_samples)], axis=1).reshape(-1)
    wav = speech.write_wav(tmp_path / "stereo.wav", left_only, channels=2)
    assert np.array_equal(_frames(wav, 0)[:len(alexa_samples)], alexa_samples)
    assert not _frames(wav, 1).any()
    with pytest.raises(AudioInputError, match="has 2 channels, no channel 2"):
        WavSource(wav, 2)


def test_16_khz_mono_passes_through_bit_exact(alexa_wav, alexa_samples):
    frames = _frames(alexa_wav)
    assert len(frames) % FRAME_SAMPLES == 0
    assert np.array_equal(frames[:len(alexa_samples)], alexa_samples)
    assert not frames[len(alexa_samples):].any()


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b""), "file is empty"),
    (lambda p: p.write_text("hello, not audio\n" * 10), "not a WAV file"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00"), "fmt chunk is truncated"),
])
def test_unreadable_files_name_the_file_and_problem(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioInputError, match=message) as e:
        WavSource(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_compressed_wav_is_refused_with_a_conversion_hint(tmp_path, alexa_wav):
    mulaw = _sox(alexa_wav, tmp_path / "mulaw.wav", "-e", "mu-law")
    with pytest.raises(AudioInputError, match="not PCM or float; convert it"):
        WavSource(mulaw)
