"""The first snapshot after an idle spell is fresh, not the one cached before it (issue 16)."""

from __future__ import annotations

from launcher.status.collect import STALE_LIMIT_S, Collector
from launcher.status.model import StatusBoard


async def test_a_snapshot_after_an_idle_spell_is_fresh() -> None:
    board = StatusBoard()
    collector = Collector(board, ttl=0.5)
    try:
        first = await collector.snapshot()
        assert first.conditions[0].status is False  # NetworkApplied not yet
        board.network_applied("wired")
        # Within the ttl the cached snapshot is served (a scrape storm costs one build)…
        assert await collector.snapshot() is first
        # …after an idle spell (no request for longer than STALE_LIMIT_S) it is not.
        collector._cached_at -= STALE_LIMIT_S + 1
        fresh = await collector.snapshot()
        assert fresh is not first
        assert fresh.conditions[0].status is True
    finally:
        await collector.close()


async def test_a_slightly_old_snapshot_is_served_while_the_next_is_built() -> None:
    board = StatusBoard()
    collector = Collector(board, ttl=0.5)
    try:
        first = await collector.snapshot()
        collector._cached_at -= 0.6  # past the ttl, within STALE_LIMIT_S
        assert await collector.snapshot() is first
        assert collector._refresh is not None  # the next one is being built
    finally:
        await collector.close()
