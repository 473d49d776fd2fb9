"""Per-client token-bucket rate limiting shared by the DHCPv4, DHCPv6 and RA servers.

A guest that floods requests must not be able to use more than a bounded share of the
launcher's CPU: each client key (a MAC address or DUID) gets ``burst`` tokens refilled at
``rate`` per second; a packet without a token is dropped before any parsing beyond the
key. The table of clients is bounded too (least recently seen evicted first), so a flood
of forged MACs cannot grow memory without bound.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["RateLimiter"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets keyed by client; ``allow(key)`` spends one token if there is one."""

    def __init__(
        self,
        rate: float = 20.0,
        burst: int = 40,
        max_clients: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate, burst and max_clients must be positive")
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()
        self.dropped = 0

    def allow(self, key: Hashable) -> bool:
        """True if the client may be answered now; counts the drop otherwise."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self.dropped += 1
        return False
