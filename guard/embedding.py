"""openWakeWord's speech-embedding model, run incrementally.

The embedding graph (Google's speech_embedding) is time-"valid" convolutions
and three 2x max-pools in time: a total time stride of 8 mel frames, exactly
the hop between two 80 ms frames. So each layer's activations for the next
window are the last window's shifted by one stride, plus a few new columns;
only those are computed, about a sixth of the work of a full pass. The first
window after a wipe is computed in full in numpy; every later one by a small
streaming graph built at load from the same layers, run as one onnxruntime call
on buffers bound once. The weights come from the hash-verified ONNX file, read
and written by a small protobuf codec (no onnx package, never a pickle).
`tests/test_embedding.py` proves the output equals onnxruntime's full pass.
"""

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from guard import models
from guard.errors import ModelError

HOP_MEL_FRAMES = 8  # mel frames per 80 ms audio frame
MEL_WINDOW = 76  # melspectrogram frames the embedding model sees (775 ms)
MEL_BINS = 32


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> dict[int, list]:
    """Protobuf wire format to {field number: [values]}; nested messages stay bytes."""
    out: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _ints(values: list) -> list[int]:
    """Repeated int64s, packed (bytes) or not."""
    result = []
    for v in values:
        if isinstance(v, bytes):
            pos = 0
            while pos < len(v):
                n, pos = _varint(v, pos)
                result.append(n - (1 << 64) if n >= 1 << 63 else n)
        else:
            result.append(v - (1 << 64) if v >= 1 << 63 else v)
    return result


def _tensor(buf: bytes) -> tuple[str, np.ndarray]:
    f = _fields(buf)
    dtype = {1: np.float32, 7: np.int64}[f[2][0]]
    dims = _ints(f.get(1, []))
    if 9 in f:
        data = np.frombuffer(f[9][0], dtype).copy()
    else:
        data = np.frombuffer(f[4][0], np.float32).copy() if 4 in f else np.array(_ints(f.get(7, [])), dtype)
    return f[8][0].decode(), data.reshape(dims)


@dataclass(frozen=True)
class Node:
    """One ONNX operation: its type, inputs, and the float and int attributes this model uses."""

    op: str
    inputs: tuple[str, ...]
    floats: dict[str, float]
    ints: dict[str, list[int]]


def _node(buf: bytes) -> Node:
    f = _fields(buf)
    floats, ints = {}, {}
    for attr in f.get(5, []):
        a = _fields(attr)
        name = a[1][0].decode()
        if 2 in a:
            floats[name] = struct.unpack("<f", a[2][0])[0]
        if 8 in a:
            ints[name] = _ints(a[8])
    return Node(f[4][0].decode(), tuple(v.decode() for v in f.get(1, [])), floats, ints)


def read_onnx(path: Path) -> tuple[list[Node], dict[str, np.ndarray]]:
    """The graph's nodes in order and its initializers (weights) by name."""
    graph = _fields(_fields(path.read_bytes())[7][0])
    return [_node(n) for n in graph.get(1, [])], dict(_tensor(t) for t in graph.get(5, []))


def _put_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def _put(number: int, value: int | bytes | str) -> bytes:
    """One protobuf field: an int as a varint, bytes and str length-delimited."""
    if isinstance(value, int):
        return _put_varint(number << 3) + _put_varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _put_varint(number << 3 | 2) + _put_varint(len(data)) + data


def _put_node(op: str, inputs: list[str], output: str, **attributes: float | int | list[int]) -> bytes:
    body = b"".join(_put(1, name) for name in inputs) + _put(2, output) + _put(4, op)
    for name, value in attributes.items():
        if isinstance(value, float):  # AttributeProto: type FLOAT = 1, INT = 2, INTS = 7
            attribute = _put(1, name) + _put_varint(2 << 3 | 5) + struct.pack("<f", value) + _put(20, 1)
        elif isinstance(value, int):
            attribute = _put(1, name) + _put(3, value) + _put(20, 2)
        else:
            attribute = _put(1, name) + b"".join(_put(8, v) for v in value) + _put(20, 7)
        body += _put(5, attribute)
    return _put(1, body)


def _put_tensor(name: str, array: np.ndarray) -> bytes:
    """A graph initializer: float32 (data type 1) or int64 (7), raw little-endian."""
    data_type = {np.dtype(np.float32): 1, np.dtype(np.int64): 7}[array.dtype]
    body = b"".join(_put(1, d) for d in array.shape) + _put(2, data_type) + _put(8, name)
    return _put(5, body + _put(9, array.astype(array.dtype.newbyteorder("<")).tobytes()))


def _put_value(number: int, name: str, shape: tuple[int, ...]) -> bytes:
    """A float32 graph input (11) or output (12) of a fixed shape."""
    dims = b"".join(_put(1, _put(1, d)) for d in shape)
    return _put(number, _put(1, name) + _put(2, _put(1, _put(1, 1) + _put(2, dims))))


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


def _layers(nodes: list[Node], weights: dict[str, np.ndarray]) -> list:
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
        self.inputs.append(_put_value(11, "mel", (1, 1, self.mel_columns, MEL_BINS)))
        previous = "mel"
        for i, (layer, shape) in enumerate(zip(layers, tail_shapes, strict=True)):
            shift = layer.shift(shift)
            columns = self._slice(previous, -layer.needs(shift), f"in{i}")
            new = self._layer(i, layer, columns)
            kept = self._slice(f"tail{i}", shift, f"kept{i}")
            self.nodes.append(_put_node("Concat", [kept, new], f"tail{i}_out", axis=2))
            self.inputs.append(_put_value(11, f"tail{i}", (1, *shape)))
            self.outputs.append(_put_value(12, f"tail{i}_out", (1, *shape)))
            previous = f"tail{i}_out"

    def _const(self, name: str, array: np.ndarray) -> str:
        self.tensors.append(_put_tensor(name, array))
        return name

    def _slice(self, source: str, start: int, output: str) -> str:
        """Columns (time, axis 2) from `start` on; a negative start counts from the end."""
        start_at = self._const(output + "_start", np.array([start], np.int64))
        self.nodes.append(_put_node("Slice", [source, start_at, self._to_end, self._time_axis], output))
        return output

    def _layer(self, i: int, layer, x: str) -> str:
        if isinstance(layer, _MaxPool):
            self.nodes.append(_put_node("MaxPool", [x], f"pool{i}", kernel_shape=[layer.kt, layer.kf],
                                        strides=[layer.kt, layer.kf]))
            return f"pool{i}"
        weight = layer.weight.reshape(layer.out_channels, -1, layer.kt, layer.kf)
        inputs = [x, self._const(f"w{i}", weight)]
        if layer.bias is not None:
            inputs.append(self._const(f"b{i}", layer.bias.reshape(-1)))
        pad = 1 if layer.kf == 3 else 0
        y = f"conv{i}"
        self.nodes.append(_put_node("Conv", inputs, y, pads=[0, pad, 0, pad]))
        if layer.relu_affine is not None:
            scale, offset = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in layer.relu_affine)
            self.nodes.append(_put_node("Relu", [y], y + "_relu"))
            self.nodes.append(_put_node("Mul", [y + "_relu", self._const(f"scale{i}", scale)], y + "_scaled"))
            self.nodes.append(_put_node("Add", [y + "_scaled", self._const(f"offset{i}", offset)], y + "_bn"))
            y += "_bn"
        if layer.alpha is not None:
            self.nodes.append(_put_node("LeakyRelu", [y], y + "_leaky", alpha=float(layer.alpha)))
            y += "_leaky"
        if layer.floor is not None:
            floor = self._const(f"floor{i}", np.array([layer.floor], np.float32))
            self.nodes.append(_put_node("Max", [y, floor], y + "_floor"))
            y += "_floor"
        return y

    def model_bytes(self) -> bytes:
        graph = b"".join(self.nodes) + _put(2, "stream") + b"".join(self.tensors) + b"".join(self.inputs) + \
            b"".join(self.outputs)
        return _put(1, 8) + _put(8, _put(1, "") + _put(2, 13)) + _put(7, graph)  # IR 8, opset 13


class StreamingEmbedding:
    """The embedding of the newest 76-frame mel window, computing only what the 8-frame hop changed.

        embed = StreamingEmbedding(path)
        vector = embed(mel_window, shifted_by=8)   # [76, 32] mel -> 96 floats

    Args:
        path: the (hash-verified) embedding_model.onnx.
    """

    def __init__(self, path: Path) -> None:
        try:
            self.layers = _layers(*read_onnx(path))
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
