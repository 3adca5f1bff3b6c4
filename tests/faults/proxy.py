"""A small TCP proxy that a test controls: it forwards loopback connections to one server, and
can cut every connection at once and refuse new ones until it is told to accept again.

Worker processes are pointed at the proxy's port instead of the server's, so a test can take
their connections away without touching the shared server (which other tests use).
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self.cut_connections = 0
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen (on a free port the first time, on the same port after a cut)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Client connections being forwarded now."""
        return len(self._links)

    async def cut(self) -> int:
        """Stop listening, so that new connections are refused, and reset every open one.

        Returns how many connections were cut.
        """
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        links, self._links = self._links, set()
        for client_w, server_w in links:
            client_w.transport.abort()
            server_w.transport.abort()
        self.cut_connections += len(links)
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        return len(links)

    async def close(self) -> None:
        await self.cut()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        if self._server is None:  # cut while the upstream connection was being made
            client_w.transport.abort()
            server_w.transport.abort()
            return
        self.accepted += 1
        link = (client_w, server_w)
        self._links.add(link)
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            pump = asyncio.create_task(self._pump(reader, writer, link))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            # One side is gone: close both, so that each peer sees it.
            self._links.discard(link)
            for w in link:
                with contextlib.suppress(OSError, RuntimeError):
                    w.close()
