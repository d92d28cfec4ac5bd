"""openWakeWord's speech-embedding model, run incrementally in numpy.

The embedding graph (Google's speech_embedding) is time-"valid" convolutions
and three 2x max-pools in time: a total time stride of 8 mel frames, exactly
the hop between two 80 ms frames. So each layer's activations for the next
window are the last window's shifted by one stride, plus a few new columns;
only those are computed here, about a sixth of the work of a full pass.
The weights come from the hash-verified ONNX file, read by a small protobuf
reader (no onnx package, never a pickle). `tests/test_embedding.py` proves the
output equals onnxruntime's full pass.
"""

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guard.errors import ModelError

HOP_MEL_FRAMES = 8  # mel frames per 80 ms audio frame


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
        self.wipe()

    def wipe(self) -> None:
        """Forget every activation; the next window is computed in full."""
        self._tails: list[np.ndarray] = []

    def __call__(self, mel: np.ndarray, shifted_by: int) -> np.ndarray:
        """Args: mel, [76, 32] float32; shifted_by, mel frames new since the last call. Returns 96 floats."""
        if shifted_by != HOP_MEL_FRAMES or not self._tails:
            return self._full(mel[None])
        x, shift = mel[None], HOP_MEL_FRAMES
        for layer, tail, keep in zip(self.layers, self._tails, self._keep, strict=True):
            shift = layer.shift(shift)
            new = layer(x[:, x.shape[1] - layer.needs(shift):])
            tail[:, :keep - shift] = tail[:, shift:]
            tail[:, keep - shift:] = new
            x = tail
        return x.reshape(-1)

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
