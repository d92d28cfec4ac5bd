"""openWakeWord's speech-embedding model, run incrementally.

The embedding graph (Google's speech_embedding) is time-"valid" convolutions
and three 2x max-pools in time: a total time stride of 8 mel frames, exactly
the hop between two 80 ms frames. So each layer's activations for the next
window are the last window's shifted by one stride, plus a few new columns;
only those are computed, about a sixth of the work of a full pass. The first
window after a wipe is computed in full in numpy; every later one by a small
streaming graph built at load from the same layers, run as one onnxruntime call
on buffers bound once. The weights come from the hash-verified ONNX file, read
and written by onnxfile.py (no onnx package, never a pickle).
`tests/test_embedding.py` proves the output equals onnxruntime's full pass.
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort

from guard import models, onnxfile
from guard.errors import ModelError

HOP_MEL_FRAMES = 8  # mel frames per 80 ms audio frame
MEL_WINDOW = 76  # melspectrogram frames the embedding model sees (775 ms)
MEL_BINS = 32


class _Conv:
    """One convolution (batch-norm folded in) with its activation: leaky ReLU, then a floor."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None) -> None:
        self.out_channels, _, self.kt, self.kf = weight.shape
        self.weight = np.ascontiguousarray(weight.reshape(self.out_channels, -1), np.float32)
        self.bias = None if bias is None else bias.astype(np.float32)[:, None]
        self.relu_affine: tuple[np.ndarray, np.ndarray] | None = None  # first layer: ReLU, then batch-norm
        self.alpha: np.float32 | None = None
        self.floor: np.float32 | None = None

    def needs(self, new_columns: int) -> int:
        return new_columns + self.kt - 1

    def shift(self, input_shift: int) -> int:
        return input_shift

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """[C, T, F] -> [C_out, T - kt + 1, F]: valid in time, zero-padded by 1 in frequency when kf is 3."""
        channels, t_in, f_out = x.shape
        if self.kf == 3:
            padded = np.zeros((channels, t_in, f_out + 2), np.float32)
            padded[:, :, 1:-1] = x
            x = padded
        else:
            f_out = f_out - self.kf + 1
        t_out = t_in - self.kt + 1
        cols = np.empty((channels, self.kt, self.kf, t_out, f_out), np.float32)
        for dt in range(self.kt):
            for df in range(self.kf):
                cols[:, dt, df] = x[:, dt:dt + t_out, df:df + f_out]
        y = self.weight @ cols.reshape(-1, t_out * f_out)
        if self.bias is not None:
            y += self.bias
        if self.relu_affine is not None:
            np.maximum(y, 0, out=y)
            y *= self.relu_affine[0]
            y += self.relu_affine[1]
        if self.alpha is not None:
            np.maximum(y, self.alpha * y, out=y)
        if self.floor is not None:
            np.maximum(y, self.floor, out=y)
        return y.reshape(self.out_channels, t_out, f_out)


class _MaxPool:
    """Max over (kt x kf) blocks with the same stride."""

    def __init__(self, kt: int, kf: int) -> None:
        if kt not in (1, 2) or kf not in (1, 2):
            raise ValueError(f"unsupported max-pool kernel {kt}x{kf}")
        self.kt, self.kf = kt, kf

    def needs(self, new_columns: int) -> int:
        return new_columns * self.kt

    def shift(self, input_shift: int) -> int:
        return input_shift // self.kt

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.maximum(x[:, :, 0::2], x[:, :, 1::2]) if self.kf == 2 else x.copy()
        return np.maximum(out[:, 0::2], out[:, 1::2]) if self.kt == 2 else out


def _layers(nodes: list[onnxfile.Node], weights: dict[str, np.ndarray]) -> list:
    """Turn the graph into conv and pool layers; refuse any graph of another shape."""
    layers: list = []
    for node in nodes:
        if node.op == "Conv":
            layers.append(_Conv(weights[node.inputs[1]], weights[node.inputs[2]] if len(node.inputs) > 2 else None))
        elif node.op == "MaxPool":
            layers.append(_MaxPool(*node.ints["kernel_shape"]))
        elif node.op == "Relu":
            layers[-1].relu_affine = (np.float32(1), np.float32(0))
        elif node.op == "BatchNormalization":
            scale, shift, mean, var = (weights[name] for name in node.inputs[1:5])
            a = scale / np.sqrt(var + np.float32(node.floats["epsilon"]))
            layers[-1].relu_affine = (a[:, None].astype(np.float32), (shift - mean * a)[:, None].astype(np.float32))
        elif node.op == "LeakyRelu":
            layers[-1].alpha = np.float32(node.floats["alpha"])
        elif node.op == "Max":
            layers[-1].floor = np.float32(weights[node.inputs[1]].reshape(-1)[0])
        elif node.op not in ("Pad", "Reshape"):
            raise ModelError(f"embedding model has an unexpected {node.op} operation")
    return layers


class _StreamGraph:
    """The per-hop step as one ONNX graph: each layer takes the new columns of the layer before, and its
    kept tail, shifted, with its new columns appended, is both an output and the next call's input."""

    def __init__(self, layers: list, tail_shapes: list[tuple[int, ...]]) -> None:
        self.nodes, self.tensors, self.inputs, self.outputs = [], [], [], []
        self._to_end = self._const("to_end", np.array([1 << 62], np.int64))
        self._time_axis = self._const("time_axis", np.array([2], np.int64))
        shift = HOP_MEL_FRAMES
        self.mel_columns = layers[0].needs(layers[0].shift(shift))
        self.inputs.append(onnxfile.put_value(11, "mel", (1, 1, self.mel_columns, MEL_BINS)))
        previous = "mel"
        for i, (layer, shape) in enumerate(zip(layers, tail_shapes, strict=True)):
            shift = layer.shift(shift)
            columns = self._slice(previous, -layer.needs(shift), f"in{i}")
            new = self._layer(i, layer, columns)
            kept = self._slice(f"tail{i}", shift, f"kept{i}")
            self.nodes.append(onnxfile.put_node("Concat", [kept, new], f"tail{i}_out", axis=2))
            self.inputs.append(onnxfile.put_value(11, f"tail{i}", (1, *shape)))
            self.outputs.append(onnxfile.put_value(12, f"tail{i}_out", (1, *shape)))
            previous = f"tail{i}_out"

    def _const(self, name: str, array: np.ndarray) -> str:
        self.tensors.append(onnxfile.put_tensor(name, array))
        return name

    def _slice(self, source: str, start: int, output: str) -> str:
        """Columns (time, axis 2) from `start` on; a negative start counts from the end."""
        start_at = self._const(output + "_start", np.array([start], np.int64))
        self.nodes.append(onnxfile.put_node("Slice", [source, start_at, self._to_end, self._time_axis], output))
        return output

    def _layer(self, i: int, layer, x: str) -> str:
        if isinstance(layer, _MaxPool):
            self.nodes.append(onnxfile.put_node("MaxPool", [x], f"pool{i}", kernel_shape=[layer.kt, layer.kf],
                                        strides=[layer.kt, layer.kf]))
            return f"pool{i}"
        weight = layer.weight.reshape(layer.out_channels, -1, layer.kt, layer.kf)
        inputs = [x, self._const(f"w{i}", weight)]
        if layer.bias is not None:
            inputs.append(self._const(f"b{i}", layer.bias.reshape(-1)))
        pad = 1 if layer.kf == 3 else 0
        y = f"conv{i}"
        self.nodes.append(onnxfile.put_node("Conv", inputs, y, pads=[0, pad, 0, pad]))
        if layer.relu_affine is not None:
            scale, offset = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in layer.relu_affine)
            self.nodes.append(onnxfile.put_node("Relu", [y], y + "_relu"))
            self.nodes.append(onnxfile.put_node("Mul", [y + "_relu", self._const(f"scale{i}", scale)], y + "_scaled"))
            self.nodes.append(onnxfile.put_node("Add", [y + "_scaled", self._const(f"offset{i}", offset)], y + "_bn"))
            y += "_bn"
        if layer.alpha is not None:
            self.nodes.append(onnxfile.put_node("LeakyRelu", [y], y + "_leaky", alpha=float(layer.alpha)))
            y += "_leaky"
        if layer.floor is not None:
            floor = self._const(f"floor{i}", np.array([layer.floor], np.float32))
            self.nodes.append(onnxfile.put_node("Max", [y, floor], y + "_floor"))
            y += "_floor"
        return y

    def model_bytes(self) -> bytes:
        graph = b"".join(self.nodes) + onnxfile.put(2, "stream") + b"".join(self.tensors) + b"".join(self.inputs) + \
            b"".join(self.outputs)
        put = onnxfile.put
        return put(1, 8) + put(8, put(1, "") + put(2, 13)) + put(7, graph)  # IR 8, opset 13


class StreamingEmbedding:
    """The embedding of the newest 76-frame mel window, computing only what the 8-frame hop changed.

        embed = StreamingEmbedding(path)
        vector = embed(mel_window, shifted_by=8)   # [76, 32] mel -> 96 floats

    Args:
        path: the (hash-verified) embedding_model.onnx.
    """

    def __init__(self, path: Path) -> None:
        try:
            self.layers = _layers(*onnxfile.read(path))
        except (KeyError, IndexError, ValueError) as e:
            raise ModelError(f"{path}: cannot read the embedding model ({e})") from None
        self._full(np.zeros((1, MEL_WINDOW, MEL_BINS), np.float32))  # learns each layer's tail shape
        graph = _StreamGraph(self.layers, [t.shape for t in self._tails])
        self._session = models.session(graph.model_bytes(), f"{path} (its streaming graph)")
        self._mel = np.zeros((1, 1, graph.mel_columns, MEL_BINS), np.float32)
        self._buffers = [[np.zeros((1, *t.shape), np.float32) for t in self._tails] for _ in range(2)]
        values = [[ort.OrtValue.ortvalue_from_numpy(b) for b in buffers] for buffers in self._buffers]
        mel = ort.OrtValue.ortvalue_from_numpy(self._mel)
        self._steps = [self._binding(mel, values[0], values[1]), self._binding(mel, values[1], values[0])]
        self.wipe()

    def _binding(self, mel: ort.OrtValue, tails_in: list, tails_out: list) -> ort.IOBinding:
        """One hop from one set of tail buffers into the other, bound once: no per-frame arrays."""
        binding = self._session.io_binding()
        binding.bind_ortvalue_input("mel", mel)
        for i, (source, target) in enumerate(zip(tails_in, tails_out, strict=True)):
            binding.bind_ortvalue_input(f"tail{i}", source)
            binding.bind_ortvalue_output(f"tail{i}_out", target)
        return binding

    def wipe(self) -> None:
        """Forget every activation; the next window is computed in full."""
        self._tails = []
        self._mel.fill(0)
        for buffers in self._buffers:
            for buffer in buffers:
                buffer.fill(0)
        self._current = 0

    def __call__(self, mel: np.ndarray, shifted_by: int) -> np.ndarray:
        """Args: mel, [76, 32] float32; shifted_by, mel frames new since the last call. Returns 96 floats."""
        if shifted_by != HOP_MEL_FRAMES or not self._tails:
            embedding = self._full(mel[None])
            for buffer, tail in zip(self._buffers[self._current], self._tails, strict=True):
                buffer[0] = tail
            return embedding
        self._mel[0, 0] = mel[len(mel) - self._mel.shape[2]:]
        self._session.run_with_iobinding(self._steps[self._current])
        self._current = 1 - self._current
        return self._buffers[self._current][-1].reshape(-1)

    def _full(self, x: np.ndarray) -> np.ndarray:
        """A whole pass, keeping of each layer's output only the columns the next hop reuses."""
        self._tails, self._keep = [], []
        shifts = [HOP_MEL_FRAMES]
        for layer in self.layers:
            shifts.append(layer.shift(shifts[-1]))
        for i, layer in enumerate(self.layers):
            x = layer(x)
            keep = self.layers[i + 1].needs(shifts[i + 2]) if i + 1 < len(self.layers) else x.shape[1]
            self._keep.append(keep)
            self._tails.append(x[:, x.shape[1] - keep:].copy())
        return x.reshape(-1)
