"""The rules of spoken confirmation, without speech: the matcher against a plain reference, and which
template files are refused. Fast, so `script/mutants confirm` runs these first."""

import math
from pathlib import Path

import numpy as np
import pytest

from guard import confirm, voiceprint
from guard.confirm import SEGMENTS, EnrollError, Enrolment, Matcher


def reference_scores(template: np.ndarray, stream: np.ndarray) -> list[float]:
    """The matcher's rule written out path by path: per heard frame, each template frame extends the
    best-by-mean path among staying, advancing one or skipping one (first wins a tie), and a match may
    start at any frame; the score is the worst quarter's mean distance on the path ending at the last frame."""
    n = len(template)
    unit = [t / np.linalg.norm(t) for t in template]
    quarter = [min(j * SEGMENTS // n, SEGMENTS - 1) for j in range(n)]
    paths: list[list[tuple[int, float]] | None] = [None] * n
    scores = []
    for e in stream:
        norm = float(np.linalg.norm(e))
        local = [1.0 - float(u @ (e / norm if norm > 1e-9 else e / 1e-9)) for u in unit]
        new: list[list[tuple[int, float]] | None] = [[(0, local[0])]] + [None] * (n - 1)
        for j in range(1, n):
            options = [paths[k] for k in (j, j - 1, j - 2) if k >= 0]
            options = [p for p in options if p is not None]
            if options:
                best = min(options, key=lambda p: sum(d for _, d in p) / len(p))
                new[j] = best + [(j, local[j])]
        paths = new
        if paths[-1] is None:
            scores.append(math.inf)
            continue
        means = []
        for q in range(SEGMENTS):
            ds = [d for j, d in paths[-1] if quarter[j] == q]
            means.append(sum(ds) / len(ds) if ds else 0.0)
        scores.append(max(means))
    return scores


def _stream(rng, frames: int) -> np.ndarray:
    """Embeddings of varied length, some much shorter than 1, like openWakeWord's."""
    return (rng.normal(size=(frames, 96)) * rng.uniform(0.05, 3.0, size=(frames, 1))).astype(np.float32)


@pytest.mark.parametrize("template_frames", [1, 2, 3, 4, 5, 7, 12, 30])
def test_invariant1_the_matcher_follows_its_rule_frame_by_frame(template_frames):
    rng = np.random.default_rng(template_frames)
    template = _stream(rng, template_frames)
    # heard: noise, then the template at its own pace, slower, faster, then noise
    slow, fast = np.repeat(template, 2, axis=0), template[::2]
    stream = np.concatenate([_stream(rng, 5), template + 0.1 * _stream(rng, template_frames), _stream(rng, 3),
                             slow, _stream(rng, 2), fast, _stream(rng, 4)])
    matcher = Matcher(template)
    got = [matcher.push(e) for e in stream]
    want = reference_scores(template, stream)
    assert len(got) == len(want)
    for frame, (g, w) in enumerate(zip(got, want, strict=True)):
        assert (g == w == math.inf) or g == pytest.approx(w, rel=1e-4, abs=1e-6), f"frame {frame}"


def test_the_template_said_at_its_own_pace_scores_zero_and_only_once_it_is_complete():
    rng = np.random.default_rng(7)
    template = _stream(rng, 12)
    matcher = Matcher(template)
    scores = [matcher.push(e) for e in np.concatenate([_stream(rng, 4), template])]
    assert scores[-1] == pytest.approx(0.0, abs=1e-6)
    assert min(scores[:-1]) > 0.3  # nothing before the last frame of the phrase comes close


def test_a_zero_embedding_is_as_far_as_can_be_and_never_a_match():
    template = _stream(np.random.default_rng(1), 4)
    matcher = Matcher(template)
    assert [matcher.push(np.zeros(96, np.float32)) for _ in range(4)][-1] == pytest.approx(1.0)


def test_reset_forgets_everything_heard_before():
    rng = np.random.default_rng(3)
    template, before, after = _stream(rng, 8), _stream(rng, 9), _stream(rng, 9)
    used = Matcher(template)
    for e in np.concatenate([before, template]):
        used.push(e)
    used.reset()
    fresh = Matcher(template)
    assert [used.push(e) for e in after] == [fresh.push(e) for e in after]


def test_best_score_is_the_closest_any_stretch_comes():
    rng = np.random.default_rng(5)
    template, stream = _stream(rng, 6), _stream(rng, 20)
    stream[7:13] = template
    want = min(reference_scores(template, stream))
    assert confirm.best_score(template, stream) == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert confirm.best_score(template, stream[:0]) == math.inf


def test_a_missing_quarter_shows_in_the_score():
    """Three quarters said exactly and the last one not at all must not average away."""
    rng = np.random.default_rng(11)
    template = _stream(rng, 16)
    heard = template.copy()
    heard[12:] = _stream(rng, 4)
    matcher = Matcher(template)
    score = [matcher.push(e) for e in heard][-1]
    assert score > 0.5


# -- template files -------------------------------------------------------------------------------------


def enrolment(**change) -> Enrolment:
    """A plausible enrolment with made-up features: numbers as calibration would place them."""
    rng = np.random.default_rng(0)
    takes = change.pop("takes", 3)
    values = dict(
        phrase="please send it now, guard",
        templates=tuple(rng.normal(size=(12, 96)).astype(np.float32) for _ in range(takes)),
        voiceprints=tuple(voiceprint.Voiceprint(rng.normal(size=(30, voiceprint.CEPSTRA)).astype(np.float32),
                                                rng.normal(size=(60, 2 * voiceprint.CEPSTRA)).astype(np.float32))
                          for _ in range(takes)),
        cohort=tuple(rng.normal(size=(30, voiceprint.CEPSTRA)).astype(np.float32) for _ in range(2)),
        threshold=0.2, positive_max=0.1, negative_min=0.3, closest="please send it now, card",
        speaker_threshold=0.5, speaker_positive_max=0.4, speaker_negative_min=0.6,
        unevenness_threshold=1.9, created="2026-11-23T00:00:00+00:00")
    values.update(change)
    return Enrolment(**values)


def saved(tmp_path, enrolment_: Enrolment, **arrays) -> Path:
    """Save, then replace or drop (None) some of the stored arrays by hand."""
    path = tmp_path / "confirm.npz"
    enrolment_.save(path)
    with np.load(path, allow_pickle=False) as data:
        stored = {k: data[k] for k in data.files}
    for key, value in arrays.items():
        if value is None:
            del stored[key]
        else:
            stored[key] = np.asarray(value)
    with path.open("wb") as f:
        np.savez(f, **stored)
    path.chmod(0o600)
    return path


def test_a_saved_enrolment_loads_as_it_was(tmp_path):
    original = enrolment()
    loaded = Enrolment.load(saved(tmp_path, original))
    assert loaded.phrase == original.phrase and loaded.closest == original.closest
    assert loaded.created == original.created
    assert all(getattr(loaded, k) == getattr(original, k) for k in Enrolment.NUMBERS)
    for a, b in zip(loaded.templates + loaded.cohort, original.templates + original.cohort, strict=True):
        assert np.array_equal(a, b) and a.dtype == np.float32
    for a, b in zip(loaded.voiceprints, original.voiceprints, strict=True):
        assert np.array_equal(a.speaker, b.speaker) and np.array_equal(a.detail, b.detail)


def test_takes_load_in_their_numbered_order_past_ten(tmp_path):
    original = enrolment(takes=12)
    loaded = Enrolment.load(saved(tmp_path, original, takeover=np.zeros((5, 96)), take_x=np.zeros((5, 96))))
    assert len(loaded.templates) == 12  # "takeover" and "take_x" are not takes
    assert all(np.array_equal(a, b) for a, b in zip(loaded.templates, original.templates, strict=True))
    assert all(np.array_equal(a.speaker, b.speaker) for a, b in zip(loaded.voiceprints, original.voiceprints,
                                                                    strict=True))


def test_the_smallest_plausible_enrolment_loads(tmp_path):
    rng = np.random.default_rng(2)
    smallest = enrolment(templates=tuple(rng.normal(size=(3, 96)).astype(np.float32) for _ in range(3)),
                         voiceprints=tuple(voiceprint.Voiceprint(np.ones((1, voiceprint.CEPSTRA), np.float32),
                                                                 np.ones((1, 2 * voiceprint.CEPSTRA), np.float32))
                                           for _ in range(3)),
                         cohort=(np.ones((1, voiceprint.CEPSTRA), np.float32),) * 2)
    assert len(Enrolment.load(saved(tmp_path, smallest)).templates) == 3


BAD_SHAPES = {
    "two takes": dict(take2=None, voice2=None, detail2=None),
    "a take without its voice": dict(voice2=None),
    "a take without its detail": dict(detail2=None),
    "one cohort voice": dict(cohort1=None),
    "a flat take": dict(take1=np.zeros(96)),
    "a take of 95 features": dict(take1=np.zeros((12, 95))),
    "a take of 97 features": dict(take1=np.zeros((12, 97))),
    "a take of 2 frames": dict(take1=np.zeros((2, 96))),
    "a flat voice": dict(voice0=np.zeros(voiceprint.CEPSTRA)),
    "a voice of the wrong width": dict(voice0=np.zeros((30, voiceprint.CEPSTRA + 1))),
    "an empty voice": dict(voice0=np.zeros((0, voiceprint.CEPSTRA))),
    "a cohort voice of the wrong width": dict(cohort0=np.zeros((30, voiceprint.CEPSTRA - 1))),
    "an empty cohort voice": dict(cohort1=np.zeros((0, voiceprint.CEPSTRA))),
    "a flat detail": dict(detail1=np.zeros(2 * voiceprint.CEPSTRA)),
    "a detail of the wrong width": dict(detail1=np.zeros((60, voiceprint.CEPSTRA))),
    "an empty detail": dict(detail1=np.zeros((0, 2 * voiceprint.CEPSTRA))),
    "a threshold of 0": dict(threshold=0.0),
    "a negative threshold": dict(speaker_threshold=-0.5),
    "a threshold that is not a number": dict(unevenness_threshold=np.nan),
    "an infinite threshold": dict(negative_min=np.inf),
}


@pytest.mark.parametrize("change", BAD_SHAPES.values(), ids=BAD_SHAPES.keys())
def test_a_template_file_of_the_wrong_shape_is_refused(tmp_path, change):
    with pytest.raises(EnrollError, match="damaged confirmation templates \\(wrong shapes or values\\)"):
        Enrolment.load(saved(tmp_path, enrolment(), **change))


def test_a_file_from_an_older_guard_names_what_it_lacks(tmp_path):
    with pytest.raises(EnrollError, match="confirm.npz: made by an older guard \\(no unevenness_threshold\\); "
                                          "enrol again: guard enroll confirm$"):
        Enrolment.load(saved(tmp_path, enrolment(), unevenness_threshold=None))


PLAUSIBLE = {
    "content threshold at its cap": dict(threshold=confirm.MAX_CONTENT_THRESHOLD, negative_min=0.6),
    "speaker threshold at its cap": dict(speaker_threshold=confirm.MAX_SPEAKER_RATIO, speaker_negative_min=0.7),
    "unevenness at 1": dict(unevenness_threshold=1.0),
    "unevenness at its cap": dict(unevenness_threshold=confirm.MAX_UNEVENNESS),
}
IMPLAUSIBLE = {
    "content threshold at the takes' worst": dict(threshold=0.1),
    "content threshold at the closest confusable": dict(threshold=0.3),
    "content threshold above the confusable": dict(threshold=0.35),
    "content threshold over its cap": dict(threshold=confirm.MAX_CONTENT_THRESHOLD + 0.01, negative_min=0.6),
    "speaker threshold at the takes' worst": dict(speaker_threshold=0.4),
    "speaker threshold at the nearest voice": dict(speaker_threshold=0.6),
    "speaker threshold over its cap": dict(speaker_threshold=confirm.MAX_SPEAKER_RATIO + 0.01,
                                           speaker_negative_min=0.7),
    "unevenness below 1": dict(unevenness_threshold=0.99),
    "unevenness over its cap": dict(unevenness_threshold=confirm.MAX_UNEVENNESS + 0.01),
}


@pytest.mark.parametrize("change", PLAUSIBLE.values(), ids=PLAUSIBLE.keys())
def test_thresholds_calibration_can_place_load(tmp_path, change):
    assert Enrolment.load(saved(tmp_path, enrolment(**change))).implausible() is None


@pytest.mark.parametrize("change", IMPLAUSIBLE.values(), ids=IMPLAUSIBLE.keys())
def test_thresholds_calibration_never_places_are_refused_by_name(tmp_path, change):
    key = next(iter(change))
    with pytest.raises(EnrollError, match=f"{key.replace('_', ' ')} {change[key]:g} lies outside.*"
                                          "which calibration never produces"):
        Enrolment.load(saved(tmp_path, enrolment(), **change))


def test_no_enrolment_says_how_to_enrol(tmp_path):
    with pytest.raises(EnrollError, match="no confirmation phrase enrolled; run: guard enroll confirm"):
        Enrolment.load(tmp_path / "confirm.npz")


def test_a_template_file_others_can_rewrite_is_refused(tmp_path):
    path = saved(tmp_path, enrolment())
    path.chmod(0o622)
    with pytest.raises(EnrollError, match="others can rewrite it"):
        Enrolment.load(path)
