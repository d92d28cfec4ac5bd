"""The few parts of an ONNX file guard reads and writes: a protobuf codec of its own.

Read: a model's nodes in order and its initializers (weights), so the embedding
model's layers can be run incrementally. Written: the small streaming graph
built from those layers. No onnx package and never a pickle; the files read
are the bundled models, verified by their SHA-256 first (models.py).
"""

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np


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


def read(path: Path) -> tuple[list[Node], dict[str, np.ndarray]]:
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


def put(number: int, value: int | bytes | str) -> bytes:
    """One protobuf field: an int as a varint, bytes and str length-delimited."""
    if isinstance(value, int):
        return _put_varint(number << 3) + _put_varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _put_varint(number << 3 | 2) + _put_varint(len(data)) + data


def put_node(op: str, inputs: list[str], output: str, **attributes: float | int | list[int]) -> bytes:
    body = b"".join(put(1, name) for name in inputs) + put(2, output) + put(4, op)
    for name, value in attributes.items():
        if isinstance(value, float):  # AttributeProto: type FLOAT = 1, INT = 2, INTS = 7
            attribute = put(1, name) + _put_varint(2 << 3 | 5) + struct.pack("<f", value) + put(20, 1)
        elif isinstance(value, int):
            attribute = put(1, name) + put(3, value) + put(20, 2)
        else:
            attribute = put(1, name) + b"".join(put(8, v) for v in value) + put(20, 7)
        body += put(5, attribute)
    return put(1, body)


def put_tensor(name: str, array: np.ndarray) -> bytes:
    """A graph initializer: float32 (data type 1) or int64 (7), raw little-endian."""
    data_type = {np.dtype(np.float32): 1, np.dtype(np.int64): 7}[array.dtype]
    body = b"".join(put(1, d) for d in array.shape) + put(2, data_type) + put(8, name)
    return put(5, body + put(9, array.astype(array.dtype.newbyteorder("<")).tobytes()))


def put_value(number: int, name: str, shape: tuple[int, ...]) -> bytes:
    """A float32 graph input (11) or output (12) of a fixed shape."""
    dims = b"".join(put(1, put(1, d)) for d in shape)
    return put(number, put(1, name) + put(2, put(1, put(1, 1) + put(2, dims))))
