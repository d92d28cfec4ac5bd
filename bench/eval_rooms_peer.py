"""Runs in .venv-bench (bench/make-venv), never in guard's own venv: the WebRTC front end
(webrtc-noise-gain, what wyoming-satellite and linux-voice-assistant offer) and pymicro-wakeword,
on the clips bench/eval_rooms.py hands over.

    .venv-bench/bin/python bench/eval_rooms_peer.py clean IN.npz OUT.npz NOISE_SUPPRESSION AUTO_GAIN_DBFS
    .venv-bench/bin/python bench/eval_rooms_peer.py wakes IN.npz OUT.json WORD...
"""

import json
import sys
from pathlib import Path

import numpy as np

CHUNK = 160  # the front end's 10 ms at 16 kHz
FRAME = 1280
REFRACTORY_FRAMES = 25  # 2 s: one wake counted per utterance, as guard's refractory_seconds does


def clean(source: Path, target: Path, noise_suppression: int, auto_gain_dbfs: int) -> None:
    """Each array through a fresh front end, 10 ms at a time, as a satellite would run it live."""
    from webrtc_noise_gain import AudioProcessor

    out = {}
    with np.load(source) as arrays:
        for name in arrays.files:
            samples = arrays[name][:len(arrays[name]) // CHUNK * CHUNK]
            processor = AudioProcessor(auto_gain_dbfs, noise_suppression)
            raw = samples.astype("<i2").tobytes()
            out[name] = np.frombuffer(b"".join(processor.Process10ms(raw[i:i + 2 * CHUNK]).audio
                                               for i in range(0, len(raw), 2 * CHUNK)), np.int16)
    np.savez(target, **out)


def wakes(source: Path, target: Path, words: list[str]) -> None:
    """Per array and word: pymicro-wakeword's wakes (its own cutoff and window), counted as guard counts them."""
    from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

    counts: dict[str, dict[str, int]] = {}
    with np.load(source) as arrays:
        for name in arrays.files:
            samples = arrays[name]
            counts[name] = {}
            for word in words:
                features, model = MicroWakeWordFeatures(), MicroWakeWord.from_builtin(Model(word))
                found, quiet_until = 0, -1
                for i in range(len(samples) // FRAME):
                    chunk = samples[i * FRAME:(i + 1) * FRAME].astype("<i2").tobytes()
                    woke = any([model.process_streaming(f) for f in features.process_streaming(chunk)])
                    if woke and i > quiet_until:
                        found += 1
                        quiet_until = i + REFRACTORY_FRAMES
                counts[name][word] = found
    target.write_text(json.dumps(counts))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "clean":
        clean(Path(args[0]), Path(args[1]), int(args[2]), int(args[3]))
    else:
        wakes(Path(args[0]), Path(args[1]), args[2:])
