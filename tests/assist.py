"""Home Assistant's side of a Wyoming satellite connection, made of the `wyoming` library's own client as
Home Assistant's Wyoming integration uses it (run-satellite, describe, pings answered)."""

import asyncio
import threading
import time

from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.satellite import RunSatellite


class HomeAssistant:
    """Home Assistant's side of a satellite connection, in a thread of its own: it connects, says
    run-satellite, asks for the satellite's info, answers pings, and keeps every event with its arrival time."""

    def __init__(self, port: int, source: str = "127.0.0.1", run_satellite: bool = True) -> None:
        self.port, self.source, self.run_satellite = port, source, run_satellite
        self.peer = ""
        self.events: list[tuple[float, Event]] = []
        self._loop = asyncio.new_event_loop()
        self._client: AsyncTcpClient | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._connect(), self._loop).result(90)
        self._reader = asyncio.run_coroutine_threadsafe(self._read(), self._loop)

    async def _connect(self) -> None:
        deadline = time.monotonic() + 60  # a guard starting beside a busy machine loads its models slowly
        while True:
            try:
                self._client = AsyncTcpClient("127.0.0.1", self.port)
                self._client._reader, self._client._writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(self.source, 0))
                host, port = self._client._writer.get_extra_info("sockname")[:2]
                self.peer = f"{host}:{port}"  # this connection as the guard sees it
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        if self.run_satellite:
            await self._client.write_event(RunSatellite().event())
        await self._client.write_event(Describe().event())


    async def _read(self) -> None:
        while (event := await self._client.read_event()) is not None:
            self.events.append((time.monotonic(), event))
            if Ping.is_type(event.type):
                await self._client.write_event(Pong(text=Ping.from_event(event).text).event())

    def send(self, *events: Event) -> None:
        async def write() -> None:
            for event in events:
                await self._client.write_event(event)
        asyncio.run_coroutine_threadsafe(write(), self._loop).result(10)

    def types(self) -> list[str]:
        return [e.type for _, e in self.events if not Ping.is_type(e.type)]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._client.disconnect(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
