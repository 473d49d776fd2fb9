"""launcher.logs.RateLimit: a few lines per condition per interval, the rest counted."""

from __future__ import annotations

import io
import json
import logging

from launcher.logs import JsonFormatter, RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_is_a_few_lines_per_interval_with_the_count() -> None:
    clock = Clock()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RateLimit(interval_s=10, burst=2, clock=clock))
    log = logging.getLogger("test.ratelimit")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        for i in range(15_000):
            log.error("accept failed: %s", f"EMFILE {i}")
            log.info("info is never limited %d", i % 2)
        log.warning("another condition")
        clock.now = 10.5
        log.error("accept failed: %s", "EMFILE again")
    finally:
        log.removeHandler(handler)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    errors = [r for r in records if r["level"] == "error"]
    assert [r["msg"] for r in errors] == [
        "accept failed: EMFILE 0",
        "accept failed: EMFILE 1",
        "accept failed: EMFILE again",
    ]
    assert errors[-1]["repeated"] == 15_000 - 2  # the lines held back in the last interval
    assert "repeated" not in errors[0]
    assert sum(r["level"] == "info" for r in records) == 15_000
    assert [r["msg"] for r in records if r["level"] == "warning"] == ["another condition"]


def test_conditions_are_bounded() -> None:
    limit = RateLimit(max_conditions=3, clock=Clock())
    for i in range(10):
        record = logging.LogRecord("x", logging.ERROR, "", 0, f"message {i}", None, None)
        assert limit.filter(record)
    assert len(limit._seen) == 3
