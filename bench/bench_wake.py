"""Wake detector cost: guard's direct-ONNX detector vs a bare openwakeword Model loop.

Both run in child processes on the same >= 10 minutes of synthesized speech in
one run; prints CPU seconds per audio second, their ratio, and peak RSS.

    .venv/bin/python bench/bench_wake.py [--minutes 10] [--model alexa] [--repeats 2]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

FRAME = 1280
RATE = 16000


def _frames(raw: Path) -> np.ndarray:
    audio = np.fromfile(raw, "<i2")
    return audio[:len(audio) // FRAME * FRAME].reshape(-1, FRAME)


def child(variant: str, raw: Path, model: str) -> dict:
    """Runs in its own process so peak RSS belongs to one variant."""
    if variant == "openwakeword":
        import openwakeword
        from openwakeword.model import Model
        detector = Model(wakeword_model_paths=[openwakeword.models[model]["model_path"]])
        step = detector.predict
    elif variant == "guard":
        from guard.wake import WakeDetector, WakeModelSettings
        detector = WakeDetector([WakeModelSettings(model)])
        step = detector.process
    else:
        from guard.cli import scan_file
        from guard.wake import WakeDetector, WakeModelSettings
        detector = WakeDetector([WakeModelSettings(model)])
        wav = raw.with_suffix(".wav")
        start = time.process_time()
        scan_file(detector, wav)
        cpu = time.process_time() - start
        return {"cpu": cpu, "audio": wav.stat().st_size / 2 / RATE, "rss_mb": _peak_rss_mb()}
    frames = _frames(raw)
    start = time.process_time()
    for frame in frames:
        step(frame)
    cpu = time.process_time() - start
    return {"cpu": cpu, "audio": len(frames) * FRAME / RATE, "rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(variant: str, raw: Path, model: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", variant, str(raw), model],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="audio length (default 10)")
    parser.add_argument("--model", default="alexa", help="one wake-word model (default alexa)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant; the fastest counts (default 2)")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "RAW", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.child[2])))
        return

    import speech
    with tempfile.TemporaryDirectory() as tmp:
        audio = speech.ordinary_speech(args.minutes * 60)
        raw = Path(tmp) / "speech.raw"
        audio.astype("<i2").tofile(raw)
        speech.write_wav(raw.with_suffix(".wav"), audio)
        results = {v: [] for v in ("openwakeword", "guard", "guard scan")}
        for _ in range(args.repeats):
            for variant in results:
                results[variant].append(_run(variant, raw, args.model))
    best = {v: min(runs, key=lambda r: r["cpu"]) for v, runs in results.items()}
    baseline = best["openwakeword"]["cpu"] / best["openwakeword"]["audio"]
    print(f"{best['openwakeword']['audio']:.0f} s of speech, model {args.model}, "
          f"best of {args.repeats}, one ONNX thread each")
    print(f"{'variant':<30}{'CPU s / audio s':>16}{'ratio':>8}{'peak RSS MB':>13}")
    names = {"openwakeword": "openwakeword Model.predict", "guard": "guard WakeDetector",
             "guard scan": "guard scan (WAV decode + detect)"}
    for variant, r in best.items():
        per_second = r["cpu"] / r["audio"]
        print(f"{names[variant]:<30}{per_second:>16.5f}{per_second / baseline:>7.2f}x{r['rss_mb']:>13.1f}")


if __name__ == "__main__":
    main()
