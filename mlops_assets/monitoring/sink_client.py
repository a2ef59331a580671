"""The serving side of the payload logger in `stack`: prediction records sent to the sink over HTTP.

Same interface as :class:`mlops_assets.serving.prediction_log.PredictionLog` (``append``,
``close``), so the transformer does not know where its log goes. ``append`` never blocks the
request: records join an in-memory buffer that one thread sends as CloudEvents
(``org.mlops.prediction.log``, at most ``batch`` records each). A batch leaves the buffer only once
the sink acknowledged it, which it does only after the write is durable; while the sink is down
or restarting the batch is retried with back-off (the same ``ce-id`` each time). At exit the
buffer is flushed (bounded by ``flush_timeout_s``).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from collections import deque
from typing import Iterable, Mapping

import orjson

from mlops_assets.monitoring.object_log import MLOPS_RECORDS

log = logging.getLogger(__name__)


class SinkPredictionLog:
    def __init__(self, url: str, source: str, model: str | None = None, batch: int = 1000,
                 timeout_s: float = 10.0, flush_timeout_s: float = 30.0):
        import httpx

        self.url = url.rstrip("/") + "/"
        self.source = source
        self.model = model  # KServe's ce-inferenceservicename: the reader keeps each model's own log
        self.batch = batch
        self.flush_timeout_s = flush_timeout_s
        self._client = httpx.Client(timeout=timeout_s)
        self._buffer: deque[Mapping] = deque()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._closed = False
        self.sent = 0
        self.retries = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="sink-log")
        self._thread.start()
        atexit.register(self.close)

    def append(self, records: Iterable[Mapping]) -> None:
        records = list(records)
        if records:
            with self._cond:
                self._buffer.extend(records)
                self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._buffer) + self._in_flight

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every appended record is acknowledged; False if ``timeout`` ran out first."""
        deadline = time.monotonic() + (self.flush_timeout_s if timeout is None else timeout)
        with self._cond:
            while self._buffer or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        if self._closed:
            return
        if not self.flush():
            log.error("prediction log: %d records not acknowledged by %s at exit", self.pending, self.url)
        self._closed = True
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._buffer and not self._closed:
                    self._cond.wait()
                if self._closed and not self._buffer:
                    return
                batch = [self._buffer.popleft() for _ in range(min(self.batch, len(self._buffer)))]
                self._in_flight = len(batch)
            self._deliver(batch)
            with self._cond:
                self._in_flight = 0
                self.sent += len(batch)
                self._cond.notify_all()

    def _deliver(self, batch: list[Mapping]) -> None:
        """Until acknowledged: 2xx is durable; 400 is a bug on this side (logged, dropped)."""
        import httpx

        body = orjson.dumps(batch, option=orjson.OPT_SERIALIZE_NUMPY)
        headers = {"ce-id": uuid.uuid4().hex, "ce-type": MLOPS_RECORDS, "ce-source": self.source,
                   "ce-specversion": "1.0", "content-type": "application/json"}
        if self.model:
            headers["ce-inferenceservicename"] = self.model
        delay = 0.05
        while True:
            try:
                response = self._client.post(self.url, content=body, headers=headers)
                if response.status_code < 300:
                    return
                if response.status_code == 400:
                    log.error("prediction log: sink refused %d records: %s", len(batch), response.text[:200])
                    return
            except httpx.HTTPError:
                pass
            self.retries += 1
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def open_prediction_log(settings, max_bytes: int, source: str = "serving"):
    """The sink over HTTP when the profile has one (stack), else the local file log."""
    if settings.sink_url:
        return SinkPredictionLog(settings.sink_url, source=source, model=settings.model_name,
                                 timeout_s=settings.service_timeout_s)
    from mlops_assets.serving.prediction_log import PredictionLog

    return PredictionLog(settings.prediction_log_dir, max_bytes)
