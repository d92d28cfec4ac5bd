"""microWakeWord engine: ESPHome's streaming TFLite models on fixed buffers that `wipe()` clears.

pymicro-wakeword 2.5.0 (the runtime Home Assistant's satellites use) supplies the TFLite C
library and the TFLite Micro audio frontend; its own `MicroWakeWord` class copies every chunk
into new bytes and arrays that cannot be wiped. Here the audio passes through one 10 ms buffer
that is overwritten in place and zeroed on wipe, and the frontend's 30 ms window is zeroed by its
reset. Each interpreter keeps int8 activations of past features (never samples) as streaming
state; a wipe replaces the interpreter, which returns that memory to the allocator.
`tests/test_micro.py` proves the scores equal pymicro-wakeword's.
"""

import ctypes
import math
from collections import deque
from pathlib import Path

import numpy as np
import pymicro_wakeword
from pymicro_features import MicroFrontend
from pymicro_wakeword.wakeword import TfLiteWakeWord

from guard import models
from guard.dsp import FRAME_SAMPLES
from guard.errors import ModelError

CHUNK_SAMPLES = 160  # 10 ms: one frontend step, one feature row
FEATURE_BINS = 40
ROWS_PER_FRAME = FRAME_SAMPLES // CHUNK_SAMPLES
_QUANTIZED = {3: np.uint8, 9: np.int8}  # kTfLiteUInt8, kTfLiteInt8
_LIBRARY = Path(pymicro_wakeword.__file__).parent / "lib" / "libtensorflowlite_c.so"
_lib: ctypes.CDLL | None = None


def _tflite() -> ctypes.CDLL:
    """The TFLite C library pymicro-wakeword ships, with the calls used here typed."""
    global _lib
    if _lib is None:
        lib = TfLiteWakeWord(_LIBRARY).lib
        lib.TfLiteModelCreate.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.TfLiteModelCreate.restype = ctypes.c_void_p
        lib.TfLiteInterpreterOptionsCreate.restype = ctypes.c_void_p
        lib.TfLiteInterpreterOptionsSetNumThreads.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        lib.TfLiteInterpreterOptionsDelete.argtypes = [ctypes.c_void_p]
        lib.TfLiteInterpreterGetTensor.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        lib.TfLiteInterpreterGetTensor.restype = ctypes.c_void_p
        lib.TfLiteTensorName.argtypes = [ctypes.c_void_p]
        lib.TfLiteTensorName.restype = ctypes.c_char_p
        _lib = lib
    return _lib


class MicroFeatures:
    """80 ms int16 frames in, up to 8 rows of 40 frontend features out, per frame."""

    def __init__(self) -> None:
        self._frontend = MicroFrontend()
        # the frontend takes only immutable bytes; this one is private and overwritten in place
        self._chunk = bytes(CHUNK_SAMPLES * 2)
        self._chunk_address = id(self._chunk) + bytes.__basicsize__ - 1
        self.rows = np.zeros((ROWS_PER_FRAME, FEATURE_BINS))
        self.count = 0
        self.rows_seen = 0  # as if every frame had been pushed once: a rest counts, a replay does not

    def push(self, frame: np.ndarray, replay: bool = False, keep_rows: bool = True) -> None:
        """Feed one frame; `rows[:count]` are the features it completed (none kept if no model will see them)."""
        samples = np.ascontiguousarray(frame, np.int16)
        base, size = samples.ctypes.data, len(self._chunk)
        self.count = 0
        for offset in range(0, FRAME_SAMPLES * 2, size):
            ctypes.memmove(self._chunk_address, base + offset, size)
            features = self._frontend.process_samples(self._chunk).features
            if features and keep_rows:
                self.rows[self.count] = features
                self.count += 1
        ctypes.memset(self._chunk_address, 0, len(self._chunk))
        self.rows_seen += 0 if replay else self.count

    def rest(self) -> None:
        """A frame skipped in a quiet room: it would have completed a frame's worth of rows."""
        self.rows_seen += ROWS_PER_FRAME

    def wipe(self) -> None:
        ctypes.memset(self._chunk_address, 0, len(self._chunk))
        self._frontend.reset()
        self.rows.fill(0)
        self.count = 0
        self.rows_seen = 0


class MicroClassifier:
    """One microWakeWord model: the mean of its last few probabilities is the score."""

    def __init__(self, model: models.ModelFile, features: MicroFeatures) -> None:
        self._features = features
        self._lib = _tflite()
        self._weights = ctypes.create_string_buffer(models.verified_bytes(model))  # TFLite reads it for life
        self._model = self._lib.TfLiteModelCreate(self._weights, len(self._weights) - 1)
        if not self._model:
            raise ModelError(f"{model.path}: not a usable TFLite model")
        self.default_threshold = float(model.meta["probability_cutoff"])
        self._probabilities: deque[float] = deque(maxlen=int(model.meta["sliding_window_size"]))
        self._interpreter = None
        self.name = model.name
        self._open_interpreter()
        # one more inference than the layers and the average hold: a replay's first may be partly stale
        self.memory_rows = (self._state_steps() + self._probabilities.maxlen + 1) * self.stride
        self.memory_frames = math.ceil(self.memory_rows / ROWS_PER_FRAME)

    def _open_interpreter(self) -> None:
        lib = self._lib
        options = lib.TfLiteInterpreterOptionsCreate()
        lib.TfLiteInterpreterOptionsSetNumThreads(options, 1)
        self._interpreter = lib.TfLiteInterpreterCreate(self._model, options)
        lib.TfLiteInterpreterOptionsDelete(options)
        if not self._interpreter or lib.TfLiteInterpreterAllocateTensors(self._interpreter) != 0:
            raise ModelError(f"{self.name}: the TFLite runtime could not open this model")
        self._in = lib.TfLiteInterpreterGetInputTensor(self._interpreter, 0)
        self._out = lib.TfLiteInterpreterGetOutputTensor(self._interpreter, 0)
        stride = lib.TfLiteTensorDim(self._in, 1)
        in_q, out_q = lib.TfLiteTensorQuantizationParams(self._in), lib.TfLiteTensorQuantizationParams(self._out)
        in_type, out_type = lib.TfLiteTensorType(self._in), lib.TfLiteTensorType(self._out)
        if in_type not in _QUANTIZED or out_type not in _QUANTIZED:
            raise ModelError(f"{self.name}: not a quantized microWakeWord model (tensor types {in_type}, {out_type})")
        self._in_scale, self._in_zero = in_q.scale, in_q.zero_point
        self._scaled = np.zeros((ROWS_PER_FRAME, FEATURE_BINS))  # a frame's rows on their way to the input
        self._quantized = np.zeros((1, stride, FEATURE_BINS), _QUANTIZED[in_type])
        self._output = np.zeros(1, _QUANTIZED[out_type])
        self._output_byte = self._output.view(np.uint8)
        # as pymicro-wakeword turns the output into a probability, once for each of the 256 values it can take
        every_output = np.arange(256, dtype=np.uint8).view(_QUANTIZED[out_type])
        self._probability_of = ((every_output.astype(np.float32) - out_q.zero_point) * out_q.scale).tolist()
        self._io = (self._quantized.ctypes.data, self._quantized.nbytes, self._output.ctypes.data, self._output.nbytes)
        self._filled = 0

    def score(self) -> float:
        """The highest score among the inferences this frame's features completed; 0 while filling."""
        count, stride, best = self._features.count, self.stride, 0.0
        scaled = self._scaled[:count]
        np.divide(self._features.rows[:count], self._in_scale, out=scaled)  # as pymicro-wakeword: x / scale + zero
        np.add(scaled, self._in_zero, out=scaled)
        np.round(scaled, out=scaled)
        done = 0
        while done < count:
            take = min(stride - self._filled, count - done)
            self._quantized[0, self._filled:self._filled + take] = scaled[done:done + take]
            self._filled, done = self._filled + take, done + take
            if self._filled == stride:
                self._filled = 0
                best = max(best, self._infer())
        return best

    @property
    def stride(self) -> int:
        """Feature rows per inference."""
        return self._quantized.shape[1]

    def resume(self, rows_before: int) -> None:
        """Scoring restarts after a rest at row `rows_before`: inferences fall where an always-on model's do."""
        self._filled = rows_before % self.stride

    def _state_steps(self) -> int:
        """The steps all streaming layers keep between inferences, summed: no output depends on inputs more
        inferences back than that (the first layer keeps feature rows, fewer than a step, counted as steps)."""
        lib, steps, index = self._lib, 0, 0
        while tensor := lib.TfLiteInterpreterGetTensor(self._interpreter, index):
            name = lib.TfLiteTensorName(tensor) or b""
            if b"stream" in name and name.endswith(b"/concat/ReadVariableOp"):
                steps += lib.TfLiteTensorDim(tensor, 1)
            index += 1
        if not steps:
            raise ModelError(f"{self.name}: no streaming layer state found; not a streaming microWakeWord model")
        return steps

    def _infer(self) -> float:
        lib, (in_data, in_size, out_data, out_size) = self._lib, self._io
        lib.TfLiteTensorCopyFromBuffer(self._in, in_data, in_size)
        lib.TfLiteInterpreterInvoke(self._interpreter)
        lib.TfLiteTensorCopyToBuffer(self._out, out_data, out_size)
        self._probabilities.append(self._probability_of[self._output_byte[0]])
        if len(self._probabilities) < self._probabilities.maxlen:
            return 0.0
        # the probabilities are multiples of a power-of-two scale, so this sum is exact and the mean
        # is statistics.mean's correctly rounded one, at a twentieth of its cost
        return math.fsum(self._probabilities) / len(self._probabilities)

    def wipe(self) -> None:
        """Back to a fresh load: no features, no probabilities, a new interpreter."""
        self._lib.TfLiteInterpreterDelete(self._interpreter)
        self._scaled.fill(0)
        self._quantized.fill(0)
        self._probabilities.clear()
        self._open_interpreter()
