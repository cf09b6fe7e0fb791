"""The metric queue: nothing blocks the caller, an outage keeps the points in order, the bound drops the oldest."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from mlflow.entities import Metric
from pac.metric_queue import MetricQueue


def points(steps: range) -> list[Metric]:
    return [Metric("loss", float(s), 0, s) for s in steps]


class Server:
    """A `send` that fails while `down` is set and records what it received."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.got: list[int] = []

    def send(self, batch: Sequence[Metric]) -> None:
        if self.down.is_set():
            raise ConnectionError("connection refused")
        self.got += [m.step for m in batch]


def test_points_logged_during_an_outage_arrive_in_order_when_it_ends() -> None:
    server = Server()
    queue = MetricQueue(server.send, where="test server", max_pending=10_000, retry_s=0.01)
    queue.put(points(range(0, 3)))
    server.down.set()
    queue.put(points(range(3, 2503)))  # more than one batch of 1000
    server.down.clear()
    assert queue.close(timeout_s=30) == 0
    assert server.got == list(range(2503))


def test_a_full_queue_drops_the_oldest_and_close_counts_what_never_went_out() -> None:
    server = Server()
    server.down.set()
    queue = MetricQueue(server.send, where="test server", max_pending=4, retry_s=0.01)
    queue.put(points(range(10)))
    assert queue.close(timeout_s=0.2) == 10  # 6 pushed out by the bound, 4 never sent
    assert server.got == []
