"""The pooled keep-alive HTTP/1.1 client of the hops between serving processes: ingress ->
transformer and transformer -> predictor.

aiohttp rather than httpx (which KServe's ``InferenceRESTClient`` and the rest of the project use):
measured on this 2-core machine (``benchmarks/hop_benchmark.py``, results in
``benchmarks/results/hops.json``, two runs), a keep-alive POST of one row costs the calling process
0.84-1.02 ms of CPU with httpx and 0.21-0.24 ms with aiohttp, and the server answering it 0.37-0.48 ms
against 0.26-0.30 ms (httpx sends the headers and the body in two writes, so the server wakes twice). Both hops of the
entity path pay this on every request. Imported only by serving processes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Iterable

import aiohttp
import orjson

# Nothing the caller did not ask for: no User-Agent, Accept, Accept-Encoding, nor the octet-stream
# content type aiohttp gives a bytes body (a V1 body without a content type is read as JSON).
SKIPPED_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class UpstreamError(Exception):
    """The server could not be reached, or the connection failed before a whole answer arrived
    (refused, reset, closed, timed out, malformed response). ``kind`` names it for messages."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass
class UpstreamResponse:
    status: int
    raw_headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        for key, value in self.raw_headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    def json(self):
        return orjson.loads(self.body)

    def error_text(self, limit: int = 300) -> str:
        """The ``error`` of a JSON error answer, else the start of the body."""
        try:
            content = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return self.body[:limit].decode("utf-8", "replace")
        return str(content.get("error", content) if isinstance(content, dict) else content)[:limit]


class Upstream:
    """One connection pool per process, opened on first use inside the running event loop."""

    def __init__(self, timeout_s: float, connect_timeout_s: float = 2.0, max_connections: int = 200):
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0,
                                             keepalive_timeout=30.0, enable_cleanup_closed=False)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout,
                                                  skip_auto_headers=SKIPPED_AUTO_HEADERS,
                                                  auto_decompress=False, raise_for_status=False)
        return self._session

    async def request(self, method: str, url: str, body: bytes = b"",
                      headers: Iterable[tuple[str, str]] | dict | None = None) -> UpstreamResponse:
        try:
            async with self._open().request(method, url, data=body or None, headers=headers,
                                            allow_redirects=False) as response:
                return UpstreamResponse(response.status, response.raw_headers, await response.read())
        except asyncio.TimeoutError:
            raise UpstreamError("Timeout") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(type(exc).__name__, str(exc)[:200]) from None

    async def post_json(self, url: str, payload, headers: dict | None = None) -> UpstreamResponse:
        return await self.request("POST", url, orjson.dumps(payload),
                                  {"content-type": "application/json", **(headers or {})})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
