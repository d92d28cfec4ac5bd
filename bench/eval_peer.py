"""Runs in .venv-bench (made by bench/make-venv), never in guard's own venv: pyopen-wakeword
(Home Assistant's wyoming-openwakeword engine) scored on the cached corpus, and the DET plot.

    .venv-bench/bin/python bench/eval_peer.py score CORPUS_DIR
    .venv-bench/bin/python bench/eval_peer.py plot CORPUS_DIR OUT.png
"""

import json
import sys
from pathlib import Path

import numpy as np

WORDS = ("alexa", "hey_jarvis", "hey_mycroft")
FRAME = 1280


def _scores(samples: np.ndarray, features, models) -> np.ndarray:
    """The highest probability each model gives within each 80 ms frame."""
    out = np.zeros((len(samples) // FRAME, len(models)))
    for i in range(len(out)):
        chunk = samples[i * FRAME:(i + 1) * FRAME].astype("<i2").tobytes()
        for embedding in features.process_streaming(chunk):
            for j, model in enumerate(models):
                out[i, j] = max([out[i, j], *model.process_streaming(embedding)])
    return out


def score(corpus: Path) -> None:
    from pyopen_wakeword import Model, OpenWakeWord, OpenWakeWordFeatures

    def fresh():
        return OpenWakeWordFeatures.from_builtin(), [OpenWakeWord.from_builtin(Model(w)) for w in WORDS]

    result = {"thresholds": np.full(len(WORDS), 0.5)}  # wyoming-openwakeword's default threshold
    with np.load(corpus / "positives.npz") as positives:
        best = []
        for i in range(len(positives.files)):
            features, models = fresh()
            best.append(_scores(positives[f"c{i}"], features, models).max(axis=0))
        result["positives"] = np.array(best)
    with np.load(corpus / "negatives.npz") as negatives:
        for name in negatives.files:
            features, models = fresh()
            result[f"neg_{name}"] = _scores(negatives[name], features, models)
    np.savez(corpus / "scores-pyopen-wakeword.npz", **result)


def plot(corpus: Path, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads((corpus / "report.json").read_text())
    figure, axes = plt.subplots(1, len(WORDS), figsize=(5 * len(WORDS), 4.2), sharey=True)
    for ax, word in zip(axes, WORDS, strict=True):
        for key, m in report.items():
            name, engine = key.split("/")
            if name != word:
                continue
            points = sorted(m["det"])
            line, = ax.step([p[0] for p in points], [p[1] for p in points], where="post", label=engine)
            ax.plot([m["fa_per_hour"]], [m["miss"]], "o", color=line.get_color())
        ax.set(title=word, xlabel="false accepts per hour", xscale="symlog", xlim=(0, 100), ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("miss rate")
    axes[-1].legend(title="dots: default threshold")
    figure.tight_layout()
    figure.savefig(out, dpi=90)


if __name__ == "__main__":
    if sys.argv[1] == "score":
        score(Path(sys.argv[2]))
    else:
        plot(Path(sys.argv[2]), Path(sys.argv[3]))
