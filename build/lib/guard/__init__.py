"""pi-guard: a wake-word privacy guard that releases audio only on local consent."""

import os

# onnxruntime >= 1.2x ships Microsoft 1DS telemetry: at import it writes a device id under
# ~/.cache/Microsoft and may report to an events endpoint. A privacy guard never phones home,
# so it is switched off before any guard module imports onnxruntime.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

__version__ = "0.1.0"
