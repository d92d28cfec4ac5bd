"""Who said the confirmation phrase: a speaker check on cepstra, second to the content match.

The wake embeddings that `confirm.py` matches were trained to ignore who is
speaking, so the same words from a visitor or a TV would pass them. Here the
phrase is compared as a sequence of noise-subtracted, floor-compressed,
mean-normalised mel cepstra (vocal-tract shape, not pitch), aligned by DTW
against the user's takes and against a cohort of synthetic voices saying the
same words. The score is the ratio of the two distances: noise and room
inflate both alike, another person sits nearer some cohort voice than the
user's takes. Nothing here stores audio: cepstra of the enrolment takes only.
"""

from dataclasses import dataclass

import numpy as np

from guard.audio import RATE_HZ

WINDOW_SAMPLES = 400  # 25 ms at 16 kHz
HOP_SAMPLES = 160  # 10 ms
FFT_SIZE = 512
MEL_BANDS = 40
CEPSTRA = 12  # c1..c12: the spectral envelope without pitch harmonics
NOISE_PERCENTILE = 10  # the quietest tenth of frames estimates the room's noise
OVERSUBTRACT = 2.0
SPEAKER_FLOOR_DB = -18.0  # log floor below the loud frames: noise in spectral valleys stops mattering
DETAIL_FLOOR_DB = -25.0  # lower for the word check: quiet consonants tell "guard" from "card"
SPEECH_RANGE_DB = 25.0  # frames this far below the loudest are not speech
MIN_SPEECH_FRAMES = 30  # 0.3 s of speech frames, or there is nothing to compare
PRE_EMPHASIS = 0.97


def _mel_filterbank() -> np.ndarray:
    def to_mel(hz):
        return 2595 * np.log10(1 + hz / 700)

    edges = 700 * (10 ** (np.linspace(to_mel(60), to_mel(7600), MEL_BANDS + 2) / 2595) - 1)
    bins = np.floor((FFT_SIZE + 1) * edges / RATE_HZ).astype(int)
    bank = np.zeros((MEL_BANDS, FFT_SIZE // 2 + 1))
    for i in range(MEL_BANDS):
        low, mid, high = bins[i], bins[i + 1], bins[i + 2]
        bank[i, low:mid] = (np.arange(low, mid) - low) / max(mid - low, 1)
        bank[i, mid:high] = (high - np.arange(mid, high)) / max(high - mid, 1)
    return bank


def _dct_matrix() -> np.ndarray:
    """Orthonormal DCT-II rows 1..CEPSTRA (c0, the loudness, is left out)."""
    k = np.arange(1, CEPSTRA + 1)[:, None]
    n = np.arange(MEL_BANDS)[None, :]
    return np.sqrt(2 / MEL_BANDS) * np.cos(np.pi * k * (2 * n + 1) / (2 * MEL_BANDS))


FILTERBANK = _mel_filterbank()
DCT = _dct_matrix()
HAMMING = np.hamming(WINDOW_SAMPLES)


def cepstra(samples: np.ndarray, floor_db: float = SPEAKER_FLOOR_DB) -> np.ndarray:
    """Features of some speech: one row of CEPSTRA per 10 ms of speech (silence dropped).

    Args:
        samples: 16 kHz mono int16, ideally with some room noise or silence around the speech.
        floor_db: the log floor below the loud frames (SPEAKER_FLOOR_DB or DETAIL_FLOOR_DB).
    Returns:
        (frames, CEPSTRA) float32, mean-normalised; empty when there is too little speech.
    """
    x = samples.astype(np.float64) / 32768
    if len(x) < WINDOW_SAMPLES:
        return np.zeros((0, CEPSTRA), np.float32)
    x[1:] -= PRE_EMPHASIS * x[:-1].copy()
    count = (len(x) - WINDOW_SAMPLES) // HOP_SAMPLES + 1
    index = np.arange(WINDOW_SAMPLES)[None, :] + HOP_SAMPLES * np.arange(count)[:, None]
    mel = (np.abs(np.fft.rfft(x[index] * HAMMING, FFT_SIZE)) ** 2) @ FILTERBANK.T
    x.fill(0)
    mel = np.maximum(mel - OVERSUBTRACT * np.percentile(mel, NOISE_PERCENTILE, axis=0), 0)
    energy = mel.sum(axis=1)
    mel = mel[energy > energy.max() * 10 ** (-SPEECH_RANGE_DB / 10)]
    if len(mel) < MIN_SPEECH_FRAMES:
        return np.zeros((0, CEPSTRA), np.float32)
    peak = np.percentile(mel.max(axis=1), 90)
    rows = np.log(mel + peak * 10 ** (floor_db / 10)) @ DCT.T
    return (rows - rows.mean(axis=0)).astype(np.float32)


def _with_deltas(rows: np.ndarray) -> np.ndarray:
    """Append each row's slope over +-2 frames: onsets and bursts, where minimal pairs differ."""
    slopes = np.zeros_like(rows)
    if len(rows) > 4:
        slopes[2:-2] = (rows[3:-1] - rows[1:-3] + 2 * (rows[4:] - rows[:-4])) / 10
    return np.hstack([rows, slopes])


@dataclass(frozen=True)
class Voiceprint:
    """One take or one stretch of heard audio: cepstra for who spoke, and finer ones for what was said."""

    speaker: np.ndarray  # (frames, CEPSTRA)
    detail: np.ndarray  # (frames, 2 * CEPSTRA): low floor, with slopes

    @classmethod
    def of(cls, samples: np.ndarray) -> "Voiceprint":
        return cls(cepstra(samples), _with_deltas(cepstra(samples, DETAIL_FLOOR_DB)).astype(np.float32))


@dataclass(frozen=True)
class Alignment:
    """How `heard` lines up with a template: the mean distance, and the worst of the template's parts."""

    mean: float
    parts: tuple[float, ...]

    @property
    def unevenness(self) -> float:
        """Worst part over the mean: high when one word differs, whoever speaks and whatever the noise."""
        return max(self.parts) / self.mean if 0 < self.mean < float("inf") else float("inf")


NO_MATCH = Alignment(float("inf"), (float("inf"),))


def align(template: np.ndarray, heard: np.ndarray, parts: int = 6) -> Alignment:
    """The best alignment of all of `template` to any stretch of `heard`.

    Steps advance the template one frame per 1 or 2 heard frames, or two per one
    (half to double the template's pace). The path is chosen by mean distance;
    the template is also scored in `parts` equal parts along that path.
    """
    if len(template) < parts or len(heard) == 0:
        return NO_MATCH
    local = np.sqrt(np.maximum(
        (template ** 2).sum(1)[:, None] + (heard ** 2).sum(1)[None, :] - 2 * template @ heard.T, 0))
    n, m = local.shape
    part_of = np.arange(n) * parts // n
    cost, length = local[0].copy(), np.ones(m)  # a match may start anywhere in `heard`
    sums, counts = np.zeros((m, parts)), np.zeros((m, parts))
    sums[:, 0], counts[:, 0] = local[0], 1
    before = (np.full(m, np.inf), np.ones(m), sums, counts)
    columns = np.arange(m)
    for i in range(1, n):
        options = np.full((3, m), np.inf)
        lengths = np.ones((3, m))
        options[0, 1:], lengths[0, 1:] = cost[:-1], length[:-1]
        options[1, 2:], lengths[1, 2:] = cost[:-2], length[:-2]
        options[2, 1:], lengths[2, 1:] = before[0][:-1], before[1][:-1]
        best = np.argmin(options / lengths, axis=0)
        source = np.clip(columns - np.array([1, 2, 1])[best], 0, m - 1)
        from_before = best == 2
        new_sums = np.where(from_before[:, None], before[2][source], sums[source])
        new_counts = np.where(from_before[:, None], before[3][source], counts[source])
        new_sums[:, part_of[i]] += local[i]
        new_counts[:, part_of[i]] += 1
        before = (cost, length, sums, counts)
        cost, length = options[best, columns] + local[i], lengths[best, columns] + 1
        sums, counts = new_sums, new_counts
    means = cost / length
    end = int(np.argmin(means))
    if not np.isfinite(means[end]):
        return NO_MATCH
    return Alignment(float(means[end]), tuple(float(v) for v in sums[end] / np.maximum(counts[end], 1)))


@dataclass(frozen=True)
class Verdict:
    """Who said it (`ratio`: own takes over nearest cohort voice) and whether every part was said (`unevenness`)."""

    ratio: float
    unevenness: float


def compare(heard: Voiceprint, takes: tuple[Voiceprint, ...], cohort: tuple[np.ndarray, ...]) -> Verdict:
    """Compare heard audio with the user's takes and with the cohort; lower is more like the user's phrase.

    The unevenness is the lowest over the takes: the phrase said some way the user
    once said it is even against that take.
    """
    own = min(align(t.speaker, heard.speaker).mean for t in takes)
    other = min(align(c, heard.speaker).mean for c in cohort)
    ratio = own / other if 0 < other < float("inf") else float("inf")
    return Verdict(ratio, min(align(t.detail, heard.detail).unevenness for t in takes))
