"""The fast subset of bench/eval.py: detections on the small seeded corpus must not regress."""

import eval as evaluation
import eval_corpus
import pytest

# measured on the QUICK corpus (24 positives per word, 0.19 h of ordinary negatives, 56 near-phrases)
MEASURED = {  # word: {engine: (misses of 24, near-phrases that wake it)}
    "alexa": {"openwakeword": (14, 6), "micro": (4, 5), "micro+second": (4, 5)},
    "hey_jarvis": {"openwakeword": (5, 3), "micro": (23, 0), "micro+second": (17, 0)},
    "hey_mycroft": {"openwakeword": (23, 18), "micro": (11, 7), "micro+second": (11, 12)},
}


@pytest.fixture(scope="module")
def corpus():
    return eval_corpus.load(eval_corpus.QUICK)


@pytest.mark.parametrize("engine", evaluation.ENGINES)
def test_detections_on_the_quick_corpus_do_not_regress(corpus, engine):
    clips, labels, negatives = corpus
    scores = evaluation.score(engine, clips, negatives)
    for i, word in enumerate(eval_corpus.WORDS):
        m = evaluation.metrics(scores, labels, i, word, float(scores["thresholds"][i]))
        misses, near = MEASURED[word][engine]
        assert m["positives"] == 24
        assert round(m["miss"] * 24) <= misses, f"{word}/{engine}: more misses than measured"
        assert m["fa_per_hour"] == 0, f"{word}/{engine}: woke on ordinary speech, tones or a quiet room"
        assert m["near_phrase_wakes"] <= near, f"{word}/{engine}: more near-phrases wake it than measured"


def test_the_corpus_is_the_same_every_time_it_is_made(tmp_path, monkeypatch):
    small = eval_corpus.Spec(words=("alexa",), voices=("en",), speeds=(175,), pitches=(50,), carriers=(),
                             conditions=(("room", 10), ("babble", 5)), negative_minutes=0.5)
    monkeypatch.setattr(eval_corpus, "ROOT", tmp_path / "a")
    first = eval_corpus.load(small)
    monkeypatch.setattr(eval_corpus, "ROOT", tmp_path / "b")
    second = eval_corpus.load(small)
    assert first[1] == second[1] and len(first[0]) == 2
    assert all((a == b).all() for a, b in zip(first[0], second[0], strict=True))
    assert all((first[2][k] == second[2][k]).all() for k in first[2])


@pytest.fixture(scope="module")
def rooms():
    import eval_rooms
    return eval_rooms.evaluate(quick=True)


def test_a_release_in_a_room_carries_only_the_request(rooms):
    """bench/eval_rooms.py --quick: the default end rule against every background it plays (docs/rooms.md, "What a
    release carries"): background all along, or 20-15 dB under the talker from mid-request, rides along under
    1 s; a request loses at most half a second of its faded end; the first design carried the room."""
    for (name, below, when), by_rule in rooms.items():
        heard = [o for o in by_rule["talker 10"] if o.woke]
        first = [o for o in by_rule["room quiet"] if o.woke]
        if when == "all along" or below is None or below >= 15:
            assert all(o.carried < 1.0 for o in heard), (name, below, when, [o.carried for o in heard])
        assert all(o.lost <= 0.5 for o in heard), (name, below, when, [o.lost for o in heard])
        if name != "quiet room" and first:
            assert min(o.carried for o in first) > 5, "the room-quiet rule is the baseline it beats"
