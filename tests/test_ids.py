"""Time-ordered ids for the prediction log."""

from __future__ import annotations

import time
import uuid

from modelyard.db.types import uuid7


def test_uuid7_is_a_version_7_rfc_9562_uuid_carrying_the_time() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after
    assert uuid.UUID(str(value)) == value


def test_uuid7s_of_later_milliseconds_sort_later_and_never_repeat() -> None:
    values = []
    for _ in range(5):
        values += [uuid7() for _ in range(1000)]
        started = time.monotonic_ns()
        while time.monotonic_ns() - started < 2_000_000:  # the next millisecond has begun
            pass
    assert len(set(values)) == len(values)
    by_millisecond = [v.int >> 80 for v in values]
    assert by_millisecond == sorted(by_millisecond)
    assert len(set(by_millisecond)) >= 5
