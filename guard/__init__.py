"""pi-guard: a wake-word privacy guard that releases audio only on local consent."""

import os

# onnxruntime >= 1.2x ships Microsoft 1DS telemetry: at import it writes a device id under
# ~/.cache/Microsoft and may report to an events endpoint. A privacy guard never phones home,
# so it is switched off before any guard module imports onnxruntime.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
# numpy's OpenBLAS starts a worker per core at its first matrix product and leaves it spinning between products:
# a default guard (micro, with openWakeWord's second opinion loaded) spent 0.8 ms of CPU per audio second on a
# worker that never worked (bench/bench_wake.py). Every product here is small; one thread does them. Set before
# any guard module imports numpy.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

__version__ = "0.1.0"
