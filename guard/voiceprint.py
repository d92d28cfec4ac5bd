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

from guard.dsp import RATE_HZ

WINDOW_SAMPLES = 400  # 25 ms at 16 kHz
DETAIL_HOP_SAMPLES = 160  # 10 ms: consonants are short
SPEAKER_HOP_SAMPLES = 320  # 20 ms: enough for the vocal tract, and a quarter of the alignment work
FFT_SIZE = 512
MEL_BANDS = 40
CEPSTRA = 12  # c1..c12: the spectral envelope without pitch harmonics
NOISE_PERCENTILE = 10  # the quietest tenth of frames estimates the room's noise
OVERSUBTRACT = 2.0
SPEAKER_FLOOR_DB = -18.0  # log floor below the loud frames: noise in spectral valleys stops mattering
DETAIL_FLOOR_DB = -25.0  # lower for the word check: quiet consonants tell "guard" from "card"
SPEECH_RANGE_DB = 25.0  # frames this far below the loudest are not speech
MIN_SPEECH_SECONDS = 0.3  # less speech than this, and there is nothing to compare
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


def cepstra(samples: np.ndarray, floor_db: float = SPEAKER_FLOOR_DB, hop: int = SPEAKER_HOP_SAMPLES
            ) -> np.ndarray:
    """Features of some speech: one row of CEPSTRA per 10 ms of speech (silence dropped).

    Args:
        samples: 16 kHz mono int16, ideally with some room noise or silence around the speech.
        floor_db: the log floor below the loud frames (SPEAKER_FLOOR_DB or DETAIL_FLOOR_DB).
        hop: samples between frames (SPEAKER_HOP_SAMPLES or DETAIL_HOP_SAMPLES).
    Returns:
        (frames, CEPSTRA) float32, mean-normalised; empty when there is under 0.3 s of speech.
    """
    x = samples.astype(np.float64) / 32768
    if len(x) < WINDOW_SAMPLES:
        return np.zeros((0, CEPSTRA), np.float32)
    x[1:] -= PRE_EMPHASIS * x[:-1].copy()
    count = (len(x) - WINDOW_SAMPLES) // hop + 1
    index = np.arange(WINDOW_SAMPLES)[None, :] + hop * np.arange(count)[:, None]
    mel = (np.abs(np.fft.rfft(x[index] * HAMMING, FFT_SIZE)) ** 2) @ FILTERBANK.T
    x.fill(0)
    mel = np.maximum(mel - OVERSUBTRACT * np.percentile(mel, NOISE_PERCENTILE, axis=0), 0)
    energy = mel.sum(axis=1)
    mel = mel[energy > energy.max() * 10 ** (-SPEECH_RANGE_DB / 10)]
    if len(mel) * hop < MIN_SPEECH_SECONDS * RATE_HZ:
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

    speaker: np.ndarray  # (20 ms frames, CEPSTRA)
    detail: np.ndarray  # (10 ms frames, 2 * CEPSTRA): low floor, with slopes

    @classmethod
    def of(cls, samples: np.ndarray) -> "Voiceprint":
        detail = cepstra(samples, DETAIL_FLOOR_DB, DETAIL_HOP_SAMPLES)
        return cls(cepstra(samples), _with_deltas(detail).astype(np.float32))


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


PARTS = 16  # the template is judged in sixteenths: one changed consonant stands out in one of them
DIAGONAL, SKIP_HEARD, SKIP_TEMPLATE = 0, 1, 2  # DTW steps: (1, 1), (1, 2), (2, 1) in (template, heard)


def align(templates: list[np.ndarray], heard: np.ndarray) -> list[Alignment]:
    """The best alignment of all of each template to any stretch of `heard`, all templates at once.

    Steps advance a template one frame per 1 or 2 heard frames, or two per one
    (half to double its pace). The path is chosen by mean distance; each
    template is then also scored in PARTS equal parts along its path.
    """
    usable = [i for i, t in enumerate(templates) if len(t) >= PARTS]
    if not usable or len(heard) < 2:
        return [NO_MATCH] * len(templates)
    lengths = np.array([len(templates[i]) for i in usable])
    n, m, width = int(lengths.max()), len(heard), heard.shape[1]
    stacked = np.zeros((len(usable), n, width), np.float32)
    for k, i in enumerate(usable):
        stacked[k, :lengths[k]] = templates[i]
    local = np.sqrt(np.maximum((stacked ** 2).sum(2)[:, :, None] + (heard ** 2).sum(1)[None, None, :]
                               - 2 * stacked @ heard.T, 0))  # (templates, n, m)
    choices = np.zeros((len(usable), n, m), np.int8)
    inf = np.full((len(usable), 2), np.inf)
    ones = np.ones((len(usable), 2))
    cost, length = local[:, 0].copy(), np.ones((len(usable), m))  # a match may start anywhere in `heard`
    before_cost, before_length = np.full_like(cost, np.inf), np.ones_like(length)
    ends = {}
    for i in range(1, n):
        padded_cost = np.concatenate([inf, cost], axis=1)
        padded_length = np.concatenate([ones, length], axis=1)
        before_padded = np.concatenate([inf[:, :1], before_cost[:, :-1]], axis=1)
        before_padded_length = np.concatenate([ones[:, :1], before_length[:, :-1]], axis=1)
        options = np.stack([padded_cost[:, 1:-1], padded_cost[:, :-2], before_padded])
        option_lengths = np.stack([padded_length[:, 1:-1], padded_length[:, :-2], before_padded_length])
        best = np.argmin(options / option_lengths, axis=0)
        choices[:, i] = best
        before_cost, before_length = cost, length
        cost = np.take_along_axis(options, best[None], 0)[0] + local[:, i]
        length = np.take_along_axis(option_lengths, best[None], 0)[0] + 1
        for k in np.nonzero(lengths == i + 1)[0]:
            ends[int(k)] = (cost[k] / length[k]).copy()
    out = [NO_MATCH] * len(templates)
    for k, i in enumerate(usable):
        means = ends[k]
        end = int(np.argmin(means))
        if np.isfinite(means[end]):
            out[i] = Alignment(float(means[end]), _parts(local[k, :lengths[k]], choices[k], end))
    return out


def _parts(local: np.ndarray, choices: np.ndarray, end: int) -> tuple[float, ...]:
    """Walk the chosen path back from (last template frame, end) and average it in PARTS parts."""
    n = len(local)
    sums, counts = np.zeros(PARTS), np.zeros(PARTS)
    row, column = n - 1, end
    while True:
        sums[row * PARTS // n] += local[row, column]
        counts[row * PARTS // n] += 1
        if row == 0:
            break
        step = int(choices[row, column])
        row, column = (row - 2, column - 1) if step == SKIP_TEMPLATE else (row - 1, column - 1 - step)
    return tuple(float(v) for v in sums / np.maximum(counts, 1))


@dataclass(frozen=True)
class VoiceVerdict:
    """Who said it (`ratio`: own takes over nearest cohort voice) and whether every part was said (`unevenness`)."""

    ratio: float
    unevenness: float


def speaker_ratio(heard: np.ndarray, takes: tuple[Voiceprint, ...], cohort: tuple[np.ndarray, ...]) -> float:
    """Distance of heard speaker cepstra to the user's nearest take over that to the nearest cohort voice."""
    found = align([t.speaker for t in takes] + list(cohort), heard)
    own = min(a.mean for a in found[:len(takes)])
    other = min(a.mean for a in found[len(takes):])
    return own / other if 0 < other < float("inf") else float("inf")


def compare(heard: Voiceprint, takes: tuple[Voiceprint, ...], cohort: tuple[np.ndarray, ...]) -> VoiceVerdict:
    """Compare heard audio with the user's takes and with the cohort; lower is more like the user's phrase.

    The unevenness is the lowest over the takes: the phrase said some way the user
    once said it is even against that take.
    """
    unevenness = min(a.unevenness for a in align([t.detail for t in takes], heard.detail))
    return VoiceVerdict(speaker_ratio(heard.speaker, takes, cohort), unevenness)
