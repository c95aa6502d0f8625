"""Kong's fixed, calendar-aligned rate-limiting windows (pure): where a window starts, how long until it resets,
the Redis key of its counter and the header names of its limit and remainder.

Windows start at UTC boundaries (the second, minute, hour, day, first of the month, first of January) and are
identified by their start in milliseconds since the epoch, as Kong's ``timestamp.get_timestamps``. A counter
expires after Kong's fixed lifetime for its window (a month is 30 days, a year 365), and ``RateLimit-Reset`` is
that lifetime minus the seconds elapsed in the window, at least 1.
"""

from __future__ import annotations

from datetime import UTC, datetime

# Kong's window names, shortest first, and their lifetimes in seconds (``expiration.lua``)
EXPIRATION = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "month": 2592000,
    "year": 31536000,
}
EMPTY_UUID = "00000000-0000-0000-0000-000000000000"


def window_start(window: str, now_ms: int) -> int:
    """The start (ms since the epoch, UTC) of the ``window`` that holds ``now_ms``."""
    now = datetime.fromtimestamp(now_ms // 1000, UTC)
    if window == "second":
        start = now
    elif window == "minute":
        start = now.replace(second=0)
    elif window == "hour":
        start = now.replace(minute=0, second=0)
    elif window == "day":
        start = now.replace(hour=0, minute=0, second=0)
    elif window == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0)
    elif window == "year":
        start = now.replace(month=1, day=1, hour=0, minute=0, second=0)
    else:
        raise ValueError(f"window: unknown window {window!r}")
    return int(start.timestamp()) * 1000


def reset_seconds(window: str, now_ms: int) -> int:
    """Seconds until the window's counter resets, as Kong's ``RateLimit-Reset`` (at least 1)."""
    elapsed = (now_ms - window_start(window, now_ms)) // 1000
    return max(1, EXPIRATION[window] - elapsed)


def counter_key(
    route_id: str | None, service_id: str | None, identifier: str, window: str, now_ms: int
) -> str:
    """Kong's Redis key of a counter: ``ratelimit:<route>:<service>:<identifier>:<window start>:<window>``, the
    route and service being the plugin's scope (the empty UUID when it is not scoped to one)."""
    start = window_start(window, now_ms)
    return f"ratelimit:{route_id or EMPTY_UUID}:{service_id or EMPTY_UUID}:{identifier}:{start}:{window}"


def limit_header(window: str) -> str:
    return f"X-RateLimit-Limit-{window.capitalize()}"


def remaining_header(window: str) -> str:
    return f"X-RateLimit-Remaining-{window.capitalize()}"
