"""Misses and false wakes of each engine on the labelled corpus of bench/eval_corpus.py.

For each shared wake word and engine: miss rate and false accepts per hour at the default
threshold, the lowest miss rate with no false accept in the negatives, and a DET curve
(bench/eval-det.png, made in .venv-bench by bench/make-venv). Scores per frame are saved to
bench/.eval/<corpus>/scores-<engine>.npz, so a new decision rule is evaluated without rescoring.

    .venv/bin/python bench/eval.py [--quick] [--no-peers]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import eval_corpus  # noqa: E402

from guard.config import WakeModelSettings  # noqa: E402
from guard.dsp import FRAME_SECONDS  # noqa: E402
from guard.wake import WakeDetector  # noqa: E402

REFRACTORY_FRAMES = round(2.0 / FRAME_SECONDS)  # guard's default refractory_seconds
SECOND_OPINION = "micro+second"  # micro, with openWakeWord's model asked when noise keeps a word under the cutoff
ENGINES = ("openwakeword", "micro", SECOND_OPINION)
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"  # peers and matplotlib: bench/make-venv


def score(engine: str, clips: list[np.ndarray], negatives: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per word: the highest score in each positive clip, and the score of every negative frame. A frame
    that openWakeWord's second opinion made a wake scores the threshold: exact at the default threshold."""
    words = list(eval_corpus.WORDS)
    asked = engine == SECOND_OPINION
    detector = WakeDetector([WakeModelSettings(w, engine="micro" if asked else engine, second_opinion=asked)
                             for w in words])

    def scored() -> list[float]:
        return [max(w.score, w.threshold if w.agreed else 0.0) for w in detector.words]

    best = np.zeros((len(clips), len(words)))
    for i, clip in enumerate(clips):
        detector.wipe()
        for frame in eval_corpus.speech.frames(clip):
            detector.process(frame)
            best[i] = np.maximum(best[i], scored())
    streams = {}
    for name, samples in negatives.items():
        detector.wipe()
        frames = eval_corpus.speech.frames(samples)
        trace = np.zeros((len(frames), len(words)))
        for j, frame in enumerate(frames):
            detector.process(frame)
            trace[j] = scored()
        streams[name] = trace
    thresholds = {w.name: w.threshold for w in detector.words}
    return {"positives": best, **{f"neg_{k}": v for k, v in streams.items()},
            "thresholds": np.array([thresholds[w] for w in words])}


def false_accepts(trace: np.ndarray, threshold: float) -> int:
    """Wakes the trigger rule would report: at or over threshold, then quiet for the refractory period."""
    count, quiet_until = 0, -1
    for frame in np.flatnonzero(trace >= threshold):
        if frame > quiet_until:
            count += 1
            quiet_until = frame + REFRACTORY_FRAMES
    return count


def metrics(scores: dict, labels: list[dict], word_index: int, word: str, threshold: float) -> dict:
    """Near-phrases are counted apart: one every 2 s would make false accepts per hour meaningless."""
    mine = np.array([label["word"] == word for label in labels])
    positives = scores["positives"][mine, word_index]
    traces = [v[:, word_index] for k, v in scores.items() if k.startswith("neg_") and k != "neg_near_phrases"]
    near = scores["neg_near_phrases"][:, word_index]
    hours = sum(len(t) for t in traces) * FRAME_SECONDS / 3600
    fa = sum(false_accepts(t, threshold) for t in traces)
    top_negative = max(float(t.max()) for t in traces)
    return {"positives": int(mine.sum()), "miss": float(np.mean(positives < threshold)), "fa_per_hour": fa / hours,
            "near_phrase_wakes": false_accepts(near, threshold), "negative_hours": hours,
            "miss_at_zero_fa": float(np.mean(positives <= top_negative)), "det": det_curve(positives, traces, hours)}


def det_curve(positives: np.ndarray, traces: list[np.ndarray], hours: float) -> list[tuple[float, float]]:
    points = []
    for threshold in np.unique(np.round(np.concatenate([positives, np.linspace(0.01, 0.999, 60)]), 3)):
        fa = sum(false_accepts(t, threshold) for t in traces) / hours
        points.append((fa, float(np.mean(positives < threshold))))
    return points


def fuse(a: dict, b: dict, combine=np.minimum, window: int = 3) -> dict:
    """Two engines as one: min (a wake needs both) or max (either will do) of each score over its
    own threshold, after a running max over `window` frames, so 1.0 is the decision point and a
    DET sweep moves both thresholds together.
    """
    def spread(x: np.ndarray) -> np.ndarray:
        out = x.copy()
        for k in range(1, window):
            out[k:] = np.maximum(out[k:], x[:-k])
        return out

    fused = {"positives": combine(a["positives"] / a["thresholds"], b["positives"] / b["thresholds"])}
    for key in a:
        if key.startswith("neg_"):
            fused[key] = combine(spread(a[key]) / a["thresholds"], spread(b[key]) / b["thresholds"])
    fused["thresholds"] = np.ones_like(a["thresholds"])
    return fused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small corpus the tests use (minutes, not hours)")
    parser.add_argument("--no-peers", action="store_true", help="skip pyopen-wakeword (the slowest to score)")
    args = parser.parse_args()
    spec = eval_corpus.QUICK if args.quick else eval_corpus.Spec()
    start = time.monotonic()
    clips, labels, negatives = eval_corpus.load(spec)
    print(f"corpus {spec.key()}: {len(clips)} positives, "
          f"{sum(len(v) for v in negatives.values()) / 16000 / 3600:.2f} h of negatives "
          f"({time.monotonic() - start:.0f} s)", flush=True)
    cache = ROOT / "bench" / ".eval" / spec.key()
    results = {}
    for engine in ENGINES:
        path = cache / f"scores-{engine}.npz"
        if not path.exists():
            started = time.monotonic()
            np.savez(path, **score(engine, clips, negatives))
            print(f"scored {engine} in {time.monotonic() - started:.0f} s", flush=True)
        with np.load(path) as f:
            results[engine] = dict(f)
    peer = cache / "scores-pyopen-wakeword.npz"
    if BENCH_PYTHON.exists() and not peer.exists() and not args.no_peers:
        started = time.monotonic()
        subprocess.run([str(BENCH_PYTHON), str(ROOT / "bench" / "eval_peer.py"), "score", str(cache)], check=True)
        print(f"scored pyopen-wakeword in {time.monotonic() - started:.0f} s", flush=True)
    if peer.exists():
        with np.load(peer) as f:
            results["pyopen-wakeword"] = dict(f)
    results["both"] = fuse(results["openwakeword"], results["micro"], np.minimum)
    results["either"] = fuse(results["openwakeword"], results["micro"], np.maximum)
    report = {}
    print("| word | engine | miss at default | false accepts/h at default | near-phrases that wake it "
          f"(of {len(eval_corpus.NEAR) * 4}) | lowest miss with 0 false accepts |")
    print("|---|---|---|---|---|---|")
    for i, word in enumerate(eval_corpus.WORDS):
        for engine, scores in results.items():
            m = metrics(scores, labels, i, word, float(scores["thresholds"][i]))
            report[f"{word}/{engine}"] = m
            print(f"| {word} | {engine} | {m['miss']:.3f} | {m['fa_per_hour']:.2f} | {m['near_phrase_wakes']} "
                  f"| {m['miss_at_zero_fa']:.3f} |")
    hours = next(iter(report.values()))["negative_hours"]
    print(f"\n{hours:.2f} h of negatives: 0 false accepts there means fewer than {1 / hours:.2f}/h; "
          "1 per 10 h needs at least 10 h of negatives, which this corpus does not have.")
    (cache / "report.json").write_text(json.dumps(report))
    if BENCH_PYTHON.exists():
        plot = cache / "eval-det.png" if args.quick else ROOT / "bench" / "eval-det.png"
        subprocess.run([str(BENCH_PYTHON), str(ROOT / "bench" / "eval_peer.py"), "plot", str(cache), str(plot)],
                       check=True)
        print(f"DET curves: {plot.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
