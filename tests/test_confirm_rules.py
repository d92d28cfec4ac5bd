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
    quarter = [j * SEGMENTS // n for j in range(n)]
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
    "a voice without its take": dict(voice3=np.zeros((30, voiceprint.CEPSTRA))),
    "a detail without its take": dict(detail3=np.zeros((60, 2 * voiceprint.CEPSTRA))),
    "a voice and detail without their take": dict(voice3=np.zeros((30, voiceprint.CEPSTRA)),
                                                  detail3=np.zeros((60, 2 * voiceprint.CEPSTRA))),
    "one cohort voice": dict(cohort1=None),
    "a take without its voice and detail": dict(voice2=None, detail2=None),
    "a flat take": dict(take1=np.zeros(96)),
    "a take of three dimensions": dict(take1=np.zeros((12, 96, 1))),
    "a take of 95 features": dict(take1=np.zeros((12, 95))),
    "a take of 97 features": dict(take1=np.zeros((12, 97))),
    "a take of 2 frames": dict(take1=np.zeros((2, 96))),
    "a flat voice": dict(voice0=np.zeros(voiceprint.CEPSTRA)),
    "a voice of three dimensions": dict(voice0=np.zeros((30, voiceprint.CEPSTRA, 1))),
    "a cohort voice of three dimensions": dict(cohort0=np.zeros((30, voiceprint.CEPSTRA, 1))),
    "a voice of the wrong width": dict(voice0=np.zeros((30, voiceprint.CEPSTRA + 1))),
    "an empty voice": dict(voice0=np.zeros((0, voiceprint.CEPSTRA))),
    "a cohort voice of the wrong width": dict(cohort0=np.zeros((30, voiceprint.CEPSTRA - 1))),
    "a narrow voice": dict(voice1=np.zeros((30, voiceprint.CEPSTRA - 1))),
    "a wide cohort voice": dict(cohort1=np.zeros((30, voiceprint.CEPSTRA + 1))),
    "an empty cohort voice": dict(cohort1=np.zeros((0, voiceprint.CEPSTRA))),
    "a flat detail": dict(detail1=np.zeros(2 * voiceprint.CEPSTRA)),
    "a detail of the wrong width": dict(detail1=np.zeros((60, voiceprint.CEPSTRA))),
    "a wide detail": dict(detail1=np.zeros((60, 2 * voiceprint.CEPSTRA + 1))),
    "a detail of three dimensions": dict(detail1=np.zeros((60, 2 * voiceprint.CEPSTRA, 1))),
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


def test_a_file_lacking_several_keys_names_the_first(tmp_path):
    with pytest.raises(EnrollError, match="no threshold\\)"):
        Enrolment.load(saved(tmp_path, enrolment(), threshold=None, created=None))


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
    "content threshold below the takes' worst": dict(threshold=0.05),
    "content threshold at the closest confusable": dict(threshold=0.3),
    "content threshold above the confusable": dict(threshold=0.35),
    "content threshold over its cap": dict(threshold=confirm.MAX_CONTENT_THRESHOLD + 0.01, negative_min=0.6),
    "speaker threshold at the takes' worst": dict(speaker_threshold=0.4),
    "speaker threshold below the takes' worst": dict(speaker_threshold=0.3),
    "speaker threshold at the nearest voice": dict(speaker_threshold=0.6),
    "speaker threshold above the nearest voice": dict(speaker_threshold=0.62, speaker_negative_min=0.61),
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


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 a zip cut short", b"\x93NUMPY not an archive", None],
                         ids=["empty", "a cut zip", "a plain array file", "a folder"])
def test_a_damaged_template_file_turns_voice_off_with_one_line(tmp_path, content):
    path = tmp_path / "confirm.npz"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
        path.chmod(0o600)
    with pytest.raises(EnrollError, match="confirm.npz: damaged confirmation templates \\(.+\\); enrol again$"):
        Enrolment.load(path)


def test_no_enrolment_says_how_to_enrol(tmp_path):
    with pytest.raises(EnrollError, match="no confirmation phrase enrolled; run: guard enroll confirm"):
        Enrolment.load(tmp_path / "confirm.npz")


def test_a_template_file_others_can_rewrite_is_refused(tmp_path):
    path = saved(tmp_path, enrolment())
    path.chmod(0o622)
    with pytest.raises(EnrollError, match="others can rewrite it"):
        Enrolment.load(path)


# -- the listener's rule while pending ------------------------------------------------------------------

def _sound(rng, seconds: float) -> np.ndarray:
    """Loud noise with a syllable-like envelope: enough for cepstra, and different every time."""
    n = int(seconds * 16000)
    envelope = 0.3 + 0.7 * np.abs(np.sin(np.arange(n) / 16000 * 2 * np.pi * rng.uniform(2, 5)))
    return (rng.normal(0, 6000, n) * envelope).clip(-32768, 32767).astype(np.int16)


def listener(threshold: float = 10.0, speaker: float = math.inf, unevenness: float = math.inf,
             template_frames: int = 1) -> tuple[confirm.SpokenConfirmation, np.ndarray]:
    """A listener whose content check passes on any embedding (threshold 10 > any cosine distance) unless
    told otherwise, and whose voice checks compare with takes and cohort made of noise."""
    rng = np.random.default_rng(4)
    template = _stream(rng, template_frames)
    takes = tuple(voiceprint.Voiceprint.of(_sound(rng, 1.5)) for _ in range(3))
    cohort = tuple(voiceprint.Voiceprint.of(_sound(rng, 1.5)).speaker for _ in range(2))
    return confirm.SpokenConfirmation(enrolment(templates=(template,) * 3, voiceprints=takes, cohort=cohort,
                                                threshold=threshold, speaker_threshold=speaker,
                                                unevenness_threshold=unevenness)), template


def _frames(count: int, seed: int = 9) -> list[np.ndarray]:
    return list(_sound(np.random.default_rng(seed), count * 0.08).reshape(count, -1))


def test_invariant1_the_first_frame_whose_embedding_was_all_heard_while_pending_is_the_first_that_can_confirm():
    said, template = listener()
    results = [said.push(template[0], f) for f in _frames(confirm.EMBEDDING_WINDOW_FRAMES + 1)]
    assert results == [False] * confirm.EMBEDDING_WINDOW_FRAMES + [True]


def test_a_content_score_at_the_threshold_passes_and_just_below_it_does_not():
    _, template = listener(template_frames=3)
    heard = template + 0.05 * _stream(np.random.default_rng(8), 3)  # close, not exact: a score above 0
    frames = _frames(confirm.EMBEDDING_WINDOW_FRAMES + 3)
    fresh = Matcher(template)
    score = [fresh.push(e) for e in heard][-1]
    assert score > 0
    for threshold, confirms in ((score, True), (np.nextafter(score, 0), False)):
        said, _ = listener(threshold=float(threshold), template_frames=3)
        results = [said.push(e, f) for e, f in zip([heard[0]] * 10 + list(heard), frames, strict=True)]
        assert results[-1] is confirms and not any(results[:-1])
        assert said.score == score


def _verdict(frames: list[np.ndarray], said: confirm.SpokenConfirmation) -> voiceprint.VoiceVerdict:
    """What the voice checks make of everything heard since pending began."""
    return voiceprint.compare(voiceprint.Voiceprint.of(np.concatenate(frames)), said.enrolment.voiceprints,
                              said.enrolment.cohort)


@pytest.mark.parametrize("nudge", ["speaker", "unevenness"])
def test_voice_checks_at_their_thresholds_pass_and_just_below_them_do_not(nudge):
    frames = _frames(confirm.EMBEDDING_WINDOW_FRAMES + 1)
    probe, template = listener()
    verdict = _verdict(frames, probe)
    assert math.isfinite(verdict.ratio) and math.isfinite(verdict.unevenness)
    for shift, confirms in ((0, True), (1, False)):
        limits = {"speaker": verdict.ratio, "unevenness": verdict.unevenness}
        limits[nudge] = float(np.nextafter(limits[nudge], 0)) if shift else limits[nudge]
        said, _ = listener(**limits)
        assert [said.push(template[0], f) for f in frames][-1] is confirms
        assert (said.speaker_score, said.unevenness) == (verdict.ratio, verdict.unevenness)


def test_after_a_refused_voice_the_next_check_waits_recheck_frames_and_a_reset_forgets_the_wait():
    said, template = listener(speaker=0.0)  # a voice that is never the user's
    frames = _frames(confirm.EMBEDDING_WINDOW_FRAMES + 4 * confirm.RECHECK_FRAMES)
    seen, checked = (math.inf, math.inf), []
    for i, f in enumerate(frames):
        assert said.push(template[0], f) is False
        if (said.speaker_score, said.unevenness) != seen:
            seen = (said.speaker_score, said.unevenness)
            checked.append(i)
    first = confirm.EMBEDDING_WINDOW_FRAMES
    assert checked == list(range(first, len(frames), confirm.RECHECK_FRAMES))
    said.enrolment = listener()[0].enrolment  # now it would pass; a new pending window must not wait
    said.reset()
    assert [said.push(template[0], f) for f in frames[:first + 1]][-1] is True


def test_the_audio_kept_for_the_voice_checks_is_zeroed_after_each_check_and_by_reset_and_wipe():
    said, template = listener(speaker=0.0)
    for f in _frames(confirm.EMBEDDING_WINDOW_FRAMES + 1):
        said.push(template[0], f)
    assert math.isfinite(said.speaker_score)  # a check ran
    assert not said._scratch.any()
    assert said.heard.snapshot(np.zeros(said.heard.capacity, np.int16)).any()
    said.reset()
    assert not said.heard.snapshot(np.zeros(said.heard.capacity, np.int16)).any() and len(said.heard) == 0
    for f in _frames(3):
        said.push(template[0], f)
    said.wipe()
    assert len(said.heard) == 0 and not said._scratch.any()


def test_invariant1_a_phrase_begun_in_one_pending_window_cannot_be_finished_in_the_next():
    said, template = listener(threshold=0.05, template_frames=3)
    frames = _frames(confirm.EMBEDDING_WINDOW_FRAMES + 3)
    skip = confirm.EMBEDDING_WINDOW_FRAMES
    assert not any(said.push(e, f) for e, f in zip([template[0]] * skip + list(template[:2]), frames, strict=False))
    said.reset()  # the window closed; a new wake, a new pending window
    results = [said.push(e, f) for e, f in zip([template[0]] * skip + [template[2]], frames, strict=False)]
    assert results == [False] * (skip + 1), "the matcher kept the first two thirds from the last window"
    fresh, _ = listener(threshold=0.05, template_frames=3)  # the control: the whole phrase in one window confirms
    assert [fresh.push(e, f) for e, f in zip([template[0]] * skip + list(template), frames, strict=True)][-1]


def _phrase_then_quiet(before: int, loud: int, quiet: int) -> list[np.ndarray]:
    """A pending window as it comes: `before` frames of the room (-70 dBFS), `loud` frames of the phrase (a steady
    -15 dBFS), then `quiet` frames of the room again."""
    rng = np.random.default_rng(3)
    room = rng.normal(0, 10, (before + quiet, 1280)).astype(np.int16)
    phrase = rng.normal(0, 6000, (loud, 1280)).astype(np.int16)
    return list(room[:before]) + list(phrase) + list(room[before:])


def _away(template: np.ndarray, distance: float) -> np.ndarray:
    """An embedding at about `distance` cosine distance from the template's first row."""
    other = np.random.default_rng(5).normal(size=96).astype(np.float32)
    other -= other @ template[0] / (template[0] @ template[0]) * template[0]
    angle = np.arccos(1 - distance)
    return (np.cos(angle) * template[0] / np.linalg.norm(template[0])
            + np.sin(angle) * other / np.linalg.norm(other)).astype(np.float32)


def test_invariant1_a_match_counts_only_three_quiet_frames_after_the_phrase_and_only_while_it_still_improves():
    """The end rule in numbers: while the talker is loud nothing confirms; in the quiet after, a match that has
    got no worse for END_QUIET_FRAMES frames confirms on the third; one that gets worse (a last word that went
    on: its best match was before the quiet) never does."""
    assert (confirm.END_QUIET_FRAMES, confirm.END_DROP_DB) == (3, 25.0)
    before, loud = confirm.EMBEDDING_WINDOW_FRAMES + 2, 6
    for scores, confirms_at in (((0.3, 0.2, 0.1, 0.05), 2), ((0.1, 0.1, 0.1, 0.1), 2), ((0.05, 0.1, 0.2, 0.3), None),
                                ((0.2, 0.1, 0.15, 0.05, 0.04), 4), ((0.2, 0.1, 0.6, 0.7, 0.8), None)):
        said, template = listener(threshold=0.5)
        frames = _phrase_then_quiet(before, loud, len(scores))
        embeddings = [_away(template, 0.9)] * before + [template[0]] * loud + [_away(template, s) for s in scores]
        results = [said.push(e, f) for e, f in zip(embeddings, frames, strict=True)]
        assert not any(results[:before + loud]), "never before the phrase, never while the talker is loud"
        confirmed = [i for i, r in enumerate(results[before + loud:]) if r]
        assert confirmed[:1] == ([] if confirms_at is None else [confirms_at]), (scores, confirmed)


def test_invariant1_quiet_is_judged_against_the_phrase_itself_not_a_louder_sound_before_it():
    """A door slams just before the phrase (15 dB louder); after the phrase the talker goes on 15 dB lower (not
    quiet: quiet is 25 dB under the phrase). Judged against the slam, that would count as quiet and confirm."""
    rng = np.random.default_rng(11)
    room = list(rng.normal(0, 3, (confirm.EMBEDDING_WINDOW_FRAMES + 2, 1280)).astype(np.int16))  # -80 dBFS
    slam = [rng.normal(0, 30000, 1280).clip(-32768, 32767).astype(np.int16)]  # about -1 dBFS
    phrase = list(rng.normal(0, 6000, (1, 1280)).astype(np.int16))  # about -15 dBFS, right after the slam
    going_on = list(rng.normal(0, 1000, (3, 1280)).astype(np.int16))  # about -30 dBFS
    said, template = listener(threshold=0.5)
    embeddings = [_away(template, 0.9)] * (len(room) + 1) + [template[0]] + [_away(template, d)
                                                                            for d in (0.3, 0.2, 0.1)]
    results = [said.push(e, f) for e, f in zip(embeddings, room + slam + phrase + going_on, strict=True)]
    assert not any(results)
    quiet = list(rng.normal(0, 10, (3, 1280)).astype(np.int16))  # the room after it: now it has ended
    results = [said.push(_away(template, d), f) for d, f in zip((0.09, 0.08, 0.07), quiet, strict=True)]
    assert results[-1] is True


def test_invariant1_the_room_measure_of_quiet_stays_15_db_under_the_phrase():
    """Beside loud talk the room's loud moments come near the phrase (here 5 dB under it); the phrase's end must
    still be ROOM_DROP_DB under its loudest frame, or the rest of a word ("guard-en") would count as quiet."""
    rng = np.random.default_rng(12)
    talk = [rng.normal(0, 3300 if i % 2 else 30, 1280).astype(np.int16)  # -20 dBFS words, -60 dBFS gaps
            for i in range(confirm.EMBEDDING_WINDOW_FRAMES + 8)]
    phrase = [rng.normal(0, 6000, 1280).astype(np.int16)]  # about -15 dBFS
    going_on = list(rng.normal(0, 1500, (3, 1280)).astype(np.int16))  # -27 dBFS: under the room's loud moments
    said, template = listener(threshold=0.5)
    embeddings = [_away(template, 0.9)] * len(talk) + [template[0]] + [_away(template, d) for d in (0.3, 0.2, 0.1)]
    assert not any(said.push(e, f) for e, f in zip(embeddings, talk + phrase + going_on, strict=True))
    ended = list(rng.normal(0, 150, (3, 1280)).astype(np.int16))  # -47 dBFS
    assert [said.push(_away(template, d), f) for d, f in zip((0.09, 0.08, 0.07), ended, strict=True)][-1] is True
