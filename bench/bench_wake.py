"""Wake detector cost: guard's engines against the libraries they equal, on speech and on a quiet day.

Every variant runs in its own child process (so peak RSS is its own) on the same audio, one model
(alexa), one thread; runs are interleaved and repeated, and the median CPU per audio second is
quoted with its range, and so is its ratio to pymicro-wakeword in each round. "day" is
mostly a quiet room (-64 dBFS) with a wake word or a few words now and then.

    .venv/bin/python bench/bench_wake.py [--speech-minutes 5] [--day-minutes 10] [--repeats 3]

pyopen-wakeword and the WebRTC front end (webrtc-noise-gain, what wyoming-satellite offers) run in
.venv-bench (bench/make-venv) when it exists; the others are in .venv. guard does not run the front end
(bench/eval_rooms.py: it loses alexa in noise); "with the front end" adds the front end's own cost, measured
in the same round, to guard's default.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from procstat import peak_rss_mb

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"

FRAME = 1280
RATE = 16000
MODEL = "alexa"
VARIANTS = {  # name: what it is
    "pymicro-wakeword": "pymicro-wakeword 2.5.0 MicroWakeWord loop (the baseline)",
    "openwakeword": "openwakeword 0.4.0 Model.predict loop",
    "pyopen-wakeword": "pyopen-wakeword 1.1.0 (TFLite openWakeWord)",
    "guard-oww-always": "guard, openwakeword engine, never resting",
    "guard-oww": "guard, openwakeword engine (default rest)",
    "guard-micro-always": "guard, micro engine, never resting",
    "guard-micro": "guard, micro engine (default rest)",
    "guard-default": "guard, the default [wake] configuration (models, engine auto, second opinion, rest)",
    "front-end": "the WebRTC front end alone (webrtc-noise-gain 1.3.0: suppression 2, gain 5 dBFS)",
    "pymicro-front-end": "pymicro-wakeword behind the WebRTC front end, as wyoming-satellite runs it",
}
WITH_FRONT_END = "guard's default configuration with the WebRTC front end (the two rows above added per round)"
IN_BENCH_VENV = ("pyopen-wakeword", "front-end", "pymicro-front-end")
FRONT_END_CHUNK = 320  # bytes: its 10 ms step


def _front_end():
    """webrtc-noise-gain's processor, 80 ms in and out, 10 ms at a time as it is fed live."""
    from webrtc_noise_gain import AudioProcessor
    processor = AudioProcessor(5, 2)
    return lambda raw: b"".join(processor.Process10ms(raw[i:i + FRONT_END_CHUNK]).audio
                                for i in range(0, len(raw), FRONT_END_CHUNK))


def _frames(raw: Path) -> np.ndarray:
    audio = np.fromfile(raw, "<i2")
    return audio[:len(audio) // FRAME * FRAME].reshape(-1, FRAME)


def _step(variant: str):
    """A function that takes one 80 ms frame, as each library is meant to be fed."""
    if variant == "openwakeword":
        import openwakeword
        from openwakeword.model import Model
        return Model(wakeword_model_paths=[openwakeword.models[MODEL]["model_path"]]).predict
    if variant == "front-end":
        clean = _front_end()
        return lambda frame: clean(frame.tobytes())
    if variant in ("pymicro-wakeword", "pymicro-front-end"):
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model
        features, model = MicroWakeWordFeatures(), MicroWakeWord.from_builtin(Model(MODEL))
        clean = _front_end() if variant == "pymicro-front-end" else bytes
        return lambda frame: [model.process_streaming(f) for f in features.process_streaming(clean(frame.tobytes()))]
    if variant == "pyopen-wakeword":
        from pyopen_wakeword import Model, OpenWakeWord, OpenWakeWordFeatures
        features, model = OpenWakeWordFeatures.from_builtin(), OpenWakeWord.from_builtin(Model(MODEL))
        return lambda frame: [list(model.process_streaming(f)) for f in features.process_streaming(frame.tobytes())]
    from guard.config import WakeModelSettings
    from guard.wake import WakeDetector
    if variant == "guard-default":
        from guard import config, parts
        return parts.detector(config.Config()).process
    engine = "micro" if "micro" in variant else "openwakeword"
    rest = None if variant.endswith("-always") else -60.0
    return WakeDetector([WakeModelSettings(MODEL, engine=engine)], rest_below_dbfs=rest).process


def child(variant: str, raw: Path) -> dict:
    """Runs in its own process so peak RSS belongs to one variant."""
    step = _step(variant)
    frames = _frames(raw)
    start = time.process_time()
    for frame in frames:
        step(frame)
    return {"cpu": time.process_time() - start, "audio": len(frames) * FRAME / RATE,
            "rss_mb": peak_rss_mb()}


def _run(variant: str, raw: Path) -> dict:
    python = BENCH_PYTHON if variant in IN_BENCH_VENV else Path(sys.executable)
    # `guard run` loads numpy with one OpenBLAS thread (guard/__init__.py); this script loads numpy before guard
    one_thread = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"} if variant.startswith("guard") else {}
    env = {**os.environ, **one_thread}
    out = subprocess.run([str(python), __file__, "--child", variant, str(raw)],
                         check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speech-minutes", type=float, default=5.0, help="ordinary speech (default 5)")
    parser.add_argument("--day-minutes", type=float, default=10.0, help="the quiet-room day profile (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per variant (default 3)")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "RAW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return

    import speech

    from guard import config
    if config.Config().wake.models != (MODEL,):
        raise SystemExit(f"bench_wake.py: guard's default [wake] models are no longer just {MODEL}; the peers must "
                         "run the same words")
    variants = [v for v in VARIANTS if v not in IN_BENCH_VENV or BENCH_PYTHON.exists()]
    with tempfile.TemporaryDirectory() as tmp:
        profiles = {"speech": speech.ordinary_speech(args.speech_minutes * 60),
                    "day": speech.day_profile(args.day_minutes * 60)}
        raws = {}
        for name, audio in profiles.items():
            raws[name] = Path(tmp) / f"{name}.raw"
            audio.astype("<i2").tofile(raws[name])
        runs = {(p, v): [] for p in profiles for v in variants}
        for _ in range(args.repeats):
            for (profile, variant), results in runs.items():
                results.append(_run(variant, raws[profile]))
    print(f"model {MODEL} (guard's default [wake] models); "
          f"{args.speech_minutes:g} min of speech, {args.day_minutes:g} min day profile; "
          f"median of {args.repeats} interleaved rounds (range); the ratio is taken to pymicro-wakeword in the "
          "same round, so a busy spell on a shared machine weighs on both sides")
    print("| audio | variant | CPU ms per audio s | vs pymicro-wakeword | peak RSS MB |")
    print("|---|---|---|---|---|")
    for profile in profiles:
        per_second = {v: [r["cpu"] / r["audio"] * 1000 for r in runs[(profile, v)]] for v in variants}
        rows = [(VARIANTS[v], per_second[v], max(r["rss_mb"] for r in runs[(profile, v)])) for v in variants]
        if "front-end" in per_second:
            added = [a + b for a, b in zip(per_second["guard-default"], per_second["front-end"], strict=True)]
            rows.append((WITH_FRONT_END, added, None))
        for name, values, rss in rows:
            ratios = [mine / theirs for mine, theirs in zip(values, per_second["pymicro-wakeword"], strict=True)]
            print(f"| {profile} | {name} | {_median_range(values, '.2f')} "
                  f"| {_median_range(ratios, '.2f', 'x')} | {'-' if rss is None else f'{rss:.0f}'} |")


def _median_range(values: list[float], spec: str, unit: str = "") -> str:
    return f"{statistics.median(values):{spec}}{unit} ({min(values):{spec}}-{max(values):{spec}})"


if __name__ == "__main__":
    main()
