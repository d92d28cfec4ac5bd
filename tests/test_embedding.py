"""The incremental embedding (the first window in numpy, every later one by the streaming graph built at load)
equals onnxruntime's full pass of the same ONNX model."""

import numpy as np
import pytest
import speech

from guard import models
from guard.embedding import MEL_BINS, MEL_WINDOW, StreamingEmbedding, _layers
from guard.errors import ModelError
from guard.onnxfile import Node, read


@pytest.fixture(scope="module")
def mel() -> np.ndarray:
    audio = np.concatenate([speech.say("hello there, Alexa, what a fine day", "en+f4"), speech.silence(0.5)])
    session = models.open_session(models.resolve("melspectrogram"))
    return session.run(None, {"input": audio[None].astype(np.float32)})[0].reshape(-1, MEL_BINS) / 10 + 2


def test_every_window_equals_onnxruntime(mel):
    reference = models.open_session(models.resolve("embedding"))
    embed = StreamingEmbedding(models.resolve("embedding").path)
    ends = [MEL_WINDOW + 5] + list(range(MEL_WINDOW + 13, len(mel), 8))  # a 5-frame hop first, as at start-up
    previous = MEL_WINDOW
    worst = 0.0
    for end in ends:
        window = np.ascontiguousarray(mel[end - MEL_WINDOW:end], np.float32)
        ours = embed(window, shifted_by=end - previous)
        theirs = reference.run(None, {"input_1": window[None, :, :, None]})[0].reshape(-1)
        worst = max(worst, float(np.abs(ours - theirs).max()))
        previous = end
    assert len(ends) > 20 and worst <= 1e-4


def test_wipe_forgets_the_cached_activations(mel):
    embed = StreamingEmbedding(models.resolve("embedding").path)
    first = np.ascontiguousarray(mel[:MEL_WINDOW])
    expected = embed(first, 8).copy()
    embed(np.ascontiguousarray(mel[8:8 + MEL_WINDOW]), 8)
    embed.wipe()
    assert embed._tails == [] and not embed._mel.any()
    assert not any(buffer.any() for buffers in embed._buffers for buffer in buffers)
    assert np.array_equal(embed(first, 8), expected)


def test_weights_come_from_the_onnx_file():
    nodes, weights = read(models.resolve("embedding").path)
    assert [n.op for n in nodes].count("Conv") == 20
    assert weights[nodes[2].inputs[1]].shape == (24, 1, 3, 3)


def test_a_graph_of_another_shape_is_refused():
    with pytest.raises(ModelError, match="unexpected Softmax"):
        _layers([Node("Softmax", ("x",), {}, {})], {})
