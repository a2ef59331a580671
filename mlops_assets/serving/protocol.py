"""uvicorn's httptools HTTP/1.1 protocol with the limits a public endpoint needs.

- A request line + header block larger than ``MAX_HEADER_BYTES`` gets ``431`` (httptools itself has
  no limit: it would buffer whatever arrives).
- A request the parser rejects (bad request line, lying or invalid ``Content-Length``, bad chunked
  encoding, non-ASCII path, upgrade requests) gets ``400`` with a JSON error instead of plain text,
  and the connection is closed, as uvicorn does.

Used by every serving process (``server.serve``) and the ingress; imported only by them.
"""

from __future__ import annotations

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEADER_BYTES = 32 * 1024


class HeaderBlockTooLarge(Exception):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    _header_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            raise HeaderBlockTooLarge()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.send_error(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeaderBlockTooLarge):
                self.send_error(431, f"request line and headers exceed {MAX_HEADER_BYTES} bytes")
            else:
                self.send_error(400, f"malformed HTTP request: {_reason(exc)}")

    def send_400_response(self, msg: str) -> None:
        self.send_error(400, msg)

    def send_error(self, status: int, message: str) -> None:
        """Answer ``status`` with a JSON error and close the connection (the stream is unusable)."""
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # a response is under way: a second one would corrupt the stream
            return
        body = orjson.dumps({"error": message})
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: ", str(len(body)).encode(), b"\r\n",
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def _reason(exc: Exception) -> str:
    context = exc.__context__
    if context is not None and not isinstance(exc, httptools.HttpParserInvalidMethodError):
        return f"{type(context).__name__}: {context}"[:200]
    return (str(exc) or type(exc).__name__)[:200]
