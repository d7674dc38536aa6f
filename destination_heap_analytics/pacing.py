"""Heap's published rate limits, and the pacer that keeps requests inside them on purpose.

Hitting a 429 and backing off wastes a round trip and, for a leaky bucket, the time it takes to drain; so
requests wait for their tokens before they leave. A 429 still slows the pacer down (AIMD), in case an
account's real limits are lower than the ones configured.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Heap's published limits (docs/heap-api.md). The per-app bulk-track figure, 15,000 a minute, is the config's
# track_events_per_minute (its default in spec.yaml).
BULK_TRACK_EVENTS_PER_MINUTE_PER_IDENTITY = 1_000
SINGLE_REQUESTS_PER_30S_PER_IDENTITY = 30  # single track and single add_user_properties

SLOWDOWN_FACTOR = 0.7  # on a 429, the rate drops to this share...
RECOVERY_STEP = 0.02  # ...and climbs back by this share of the configured rate per accepted request
MINIMUM_RATE_SHARE = 0.1
IDLE_BUCKETS_KEPT = 50_000  # per-identity buckets kept before full ones are forgotten


@dataclass
class _Bucket:
    """A leaky bucket kept as the time it will be empty (GCRA), so reserving is one comparison."""

    empty_at: float = 0.0

    def reserve(self, tokens: float, rate: float, burst: float, now: float) -> float:
        """Reserve `tokens` that drain at `rate` a second; returns the wait that keeps the level <= `burst`."""
        send_at = max(now, self.empty_at - max(0.0, burst - tokens) / rate)
        self.empty_at = max(self.empty_at, send_at) + tokens / rate
        return send_at - now


class Pacer:
    """Waits before each request so that Heap's limits hold, across all concurrent senders."""

    def __init__(
        self,
        app_rate_per_second: float,
        identity_rate_per_second: float,
        burst: float,
        identity_burst: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self._app_rate = app_rate_per_second  # 0: no per-app limit
        self._identity_rate = identity_rate_per_second  # 0: no per-identity limit
        self._burst = burst
        self._identity_burst = identity_burst
        self._share = 1.0
        self._app = _Bucket()
        self._identities: dict[str, _Bucket] = {}
        self._paused_until = 0.0
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    @classmethod
    def for_api(
        cls,
        api_type: str,
        bulk: bool,
        track_events_per_minute: int,
        batch_size: int,
        sleep: Callable[[float], object],
        clock: Callable[[], float] = time.monotonic,
    ) -> Pacer | None:
        """The pacer Heap's limits call for, or None where Heap publishes no limit or pacing is off (0).
        `sleep` waits; a sync that is stopping passes one that returns early (an Event's wait)."""
        if not track_events_per_minute:
            return None
        if api_type == "track" and bulk:
            per_identity = BULK_TRACK_EVENTS_PER_MINUTE_PER_IDENTITY
            rates = (track_events_per_minute / 60, per_identity / 60, batch_size, per_identity / 4)
            return cls(*rates, clock=clock, sleep=sleep)
        if api_type in ("track", "add_user_properties") and not bulk:
            per_identity = SINGLE_REQUESTS_PER_30S_PER_IDENTITY
            return cls(0, per_identity / 30, 0, per_identity, clock=clock, sleep=sleep)
        return None

    def wait_for(self, identities: Iterable[str | None]) -> float:
        """Block until a request carrying one item per identity given may be sent; returns the wait."""
        counts = Counter(identity for identity in identities if identity is not None)
        with self._lock:
            now = self._clock()
            delay = max(0.0, self._paused_until - now)
            if self._app_rate:
                total = sum(counts.values())
                delay = max(delay, self._app.reserve(total, self._app_rate * self._share, self._burst, now))
            if self._identity_rate:
                delay = max(delay, self._reserve_identities(counts, now))
        if delay > 0:
            self._sleep(delay)
        return delay

    def throttled(self, retry_after: float | None) -> None:
        """Heap answered 429: slow down, and hold every sender back for Retry-After when Heap gave one."""
        with self._lock:
            self._share = max(MINIMUM_RATE_SHARE, self._share * SLOWDOWN_FACTOR)
            if retry_after:
                self._paused_until = max(self._paused_until, self._clock() + retry_after)

    def accepted(self) -> None:
        if self._share < 1.0:
            with self._lock:
                self._share = min(1.0, self._share + RECOVERY_STEP)

    def _reserve_identities(self, counts: Counter, now: float) -> float:
        if len(self._identities) > IDLE_BUCKETS_KEPT:
            self._forget_full_buckets(now)
        rate = self._identity_rate * self._share
        delay = 0.0
        for identity, count in counts.items():
            bucket = self._identities.setdefault(identity, _Bucket())
            delay = max(delay, bucket.reserve(count, rate, self._identity_burst, now))
        return delay

    def _forget_full_buckets(self, now: float) -> None:
        self._identities = {key: bucket for key, bucket in self._identities.items() if bucket.empty_at > now}
