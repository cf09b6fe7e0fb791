"""Metrics on their way to the tracking server: sent from a background thread, kept through an outage.

Training never waits on the tracking server: `put` only appends to a queue. A thread sends what is queued in
batches; when the server cannot be reached the points stay queued (up to a bound, oldest dropped first) and go out
once it answers again, in step order. `close` waits a bounded time for the rest, then says what it could not send.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from mlflow.entities import Metric

log = logging.getLogger(__name__)

BATCH = 1000  # MLflow's log_batch accepts at most 1000 metrics per call


class MetricQueue:
    """A bounded queue of metrics and the thread that sends them with `send` (one `log_batch` call).

    `send` raising anything is taken as the server being unreachable: the batch is kept and retried every
    `retry_s` seconds. The thread is a daemon, so a killed process loses at most the queue, never blocks exit.
    """

    def __init__(self, send: Callable[[Sequence[Metric]], None], *, where: str, max_pending: int,
                 retry_s: float = 5.0) -> None:
        self._send, self._where, self._retry_s = send, where, retry_s
        self._pending: deque[Metric] = deque()
        self._max_pending = max_pending
        self._inflight = 0  # points taken off the queue by a send in progress
        self._dropped = 0  # oldest points pushed out of a full queue
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = float("inf")  # when closing: the moment to give up on an unreachable server
        self._outage_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="pac-metrics", daemon=True)
        self._thread.start()

    def put(self, metrics: Sequence[Metric]) -> None:
        with self._cond:
            self._pending.extend(metrics)
            self._trim()
            self._cond.notify()

    def _trim(self) -> None:
        while len(self._pending) > self._max_pending:
            self._pending.popleft()
            self._dropped += 1

    def close(self, timeout_s: float) -> int:
        """Send what is queued, waiting at most `timeout_s`; returns how many points were never sent."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing, self._deadline = True, deadline
            self._cond.notify()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            lost = len(self._pending) + self._inflight + self._dropped
            self._pending.clear()
        if lost:
            log.warning("%d metric points could not be sent to the %s (server unreachable or queue full)", lost,
                        self._where)
        return lost

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return  # closing, everything sent
                batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
                self._inflight = len(batch)
            try:
                self._send(batch)
            except Exception as e:  # any failure to send is an outage to ride out
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    log.warning("cannot send metrics to the %s (%s); keeping them and retrying every %.0f s",
                                self._where, str(e).splitlines()[0][:200], self._retry_s)
                with self._cond:
                    self._pending.extendleft(reversed(batch))  # back in front, in step order
                    self._inflight = 0
                    self._trim()
                    left = self._deadline - time.monotonic()
                    if left <= 0:
                        return  # close() waited long enough for a server that does not answer
                    self._cond.wait(min(self._retry_s, left))
                continue
            with self._cond:
                self._inflight = 0
            if self._outage_since is not None:
                log.info("the %s answers again after %.0f s; sent the metrics kept meanwhile", self._where,
                         time.monotonic() - self._outage_since)
                self._outage_since = None
