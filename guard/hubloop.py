"""Home Assistant's servers (the Wyoming satellite, the ESPHome API) serve on an asyncio loop in a thread of
their own; a release comes from the delivery thread and waits here for its coroutine on that loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine

from guard.errors import DeliveryUncertain


def release_on(loop: asyncio.AbstractEventLoop, stream: Coroutine[object, object, str], timeout_seconds: float,
               to: str) -> str:
    """Run a release's coroutine on the server's loop; one that outlasts its time may have arrived in part.

    Raises:
        DeliveryUncertain: the time ran out while the audio was on its way to `to`.
    """
    future = asyncio.run_coroutine_threadsafe(stream, loop)
    try:
        return future.result(timeout_seconds)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise DeliveryUncertain(f"{to} did not take the audio within {timeout_seconds:g} s; part of it may have "
                                "arrived") from None
