"""A bus whose broker goes away: consumers' polls raise BusError, as KafkaBus's do while the group
coordinator is unreachable (a broker restart)."""

from __future__ import annotations

import threading

from services.common.bus import BusError, MemoryBus


class PollFailingBus(MemoryBus):
    """After ``fail_polls(n)`` the next ``n`` polls of any of its consumers raise BusError;
    ``recovered`` is set once the last of them has been made (the broker is back)."""

    def __init__(self):
        super().__init__()
        self.failing = 0
        self.failed_polls = 0
        self.recovered = threading.Event()
        self._failures_lock = threading.Lock()

    def fail_polls(self, n: int) -> None:
        with self._failures_lock:
            self.failing = n
            self.recovered.clear()

    def _fail(self) -> bool:
        with self._failures_lock:
            if self.failing <= 0:
                return False
            self.failing -= 1
            self.failed_polls += 1
            if self.failing == 0:
                self.recovered.set()
            return True

    def consumer(self, topics, group_id, client_id=None):
        inner, bus = super().consumer(topics, group_id, client_id), self

        class Flaky:
            def __getattr__(self, name):
                return getattr(inner, name)

            def poll(self, timeout_s=1.0, max_records=500):
                if bus._fail():
                    raise BusError("poll failed: KafkaConnectionError: 111 ECONNREFUSED")
                return inner.poll(timeout_s, max_records)

        return Flaky()
