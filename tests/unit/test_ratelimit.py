"""The per-client token bucket bounds each client and the client table."""

from __future__ import annotations

import pytest

from dhcp.ratelimit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [rl.allow("a") for _ in range(4)] == [True, True, True, False]
    assert rl.dropped == 1
    clock.now = 0.5  # one token back
    assert rl.allow("a") is True
    assert rl.allow("a") is False


def test_clients_are_independent() -> None:
    rl = RateLimiter(rate=1.0, burst=1, clock=FakeClock())
    assert rl.allow("a") is True
    assert rl.allow("a") is False
    assert rl.allow("b") is True


def test_table_is_bounded() -> None:
    rl = RateLimiter(rate=1.0, burst=1, max_clients=2, clock=FakeClock())
    for key in ("a", "b", "c"):
        assert rl.allow(key)
    assert len(rl._buckets) == 2
    assert "a" not in rl._buckets


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(rate=0)
