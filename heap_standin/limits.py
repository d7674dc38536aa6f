"""Heap's rate limits, as leaky buckets: per app for bulk track events, per identity when asked for."""

from __future__ import annotations

from collections import Counter
from typing import Any

from heap_standin.rules import Endpoint

IDENTITY_BULK_EVENTS_PER_MINUTE = 1000
IDENTITY_SINGLE_REQUESTS = 30  # per 30 s, i.e. one request a second with a burst of 30


class LeakyBuckets:
    """Leaky buckets keyed by (app_id, identity, ...): each drains continuously at ``per_second``."""

    _PRUNE_AT = 100_000  # keeps memory flat when a benchmark walks through many identities

    def __init__(self, capacity: float, per_second: float) -> None:
        self.capacity = capacity
        self.per_second = per_second
        self._levels: dict[Any, tuple[float, float]] = {}
        self._prune_at = self._PRUNE_AT

    def _level(self, key: Any, now: float) -> float:
        level, stamp = self._levels.get(key, (0.0, now))
        return max(0.0, level - (now - stamp) * self.per_second)

    def wait_seconds(self, key: Any, amount: float, now: float) -> float:
        """Seconds until ``amount`` fits. A batch bigger than the bucket fits once it is empty, so it is
        throttled rather than rejected forever."""
        overflow = self._level(key, now) + min(amount, self.capacity) - self.capacity
        return overflow / self.per_second if overflow > 1e-9 else 0.0

    def add(self, key: Any, amount: float, now: float) -> None:
        self._levels[key] = (self._level(key, now) + amount, now)
        if len(self._levels) > self._prune_at:
            self._levels = {k: v for k, v in self._levels.items() if self._level(k, now) > 0}
            # Many buckets still busy: wait for twice as many before scanning again, so adds stay O(1).
            self._prune_at = max(self._PRUNE_AT, 2 * len(self._levels))

    def clear(self) -> None:
        self._levels.clear()


class Limits:
    """Heap's published limits, switched on by the HeapStandin options. Callers hold the state lock."""

    def __init__(self, track_events_per_minute: int, enforce_identity_limits: bool) -> None:
        rate = track_events_per_minute
        self.app_track = LeakyBuckets(rate / 4, rate / 60) if rate > 0 else None
        self.identity_bulk = None
        self.identity_single = None
        if enforce_identity_limits:
            per_minute = IDENTITY_BULK_EVENTS_PER_MINUTE
            self.identity_bulk = LeakyBuckets(per_minute, per_minute / 60)
            self.identity_single = LeakyBuckets(IDENTITY_SINGLE_REQUESTS, IDENTITY_SINGLE_REQUESTS / 30)

    def clear(self) -> None:
        for buckets in (self.app_track, self.identity_bulk, self.identity_single):
            if buckets is not None:
                buckets.clear()

    def _charges(self, endpoint: Endpoint, body: dict, bulk: bool) -> list[tuple[LeakyBuckets, Any, int]]:
        """What this request would take from which bucket."""
        app_id = body["app_id"]
        charges: list[tuple[LeakyBuckets, Any, int]] = []
        if endpoint.kind == "track" and bulk:
            events = body["events"]
            if self.app_track is not None:
                charges.append((self.app_track, app_id, len(events)))
            if self.identity_bulk is not None:
                per_identity = Counter(event["identity"] for event in events)
                charges.extend((self.identity_bulk, (app_id, who), n) for who, n in per_identity.items())
        elif not bulk and endpoint.kind in ("track", "user") and self.identity_single is not None:
            who = body.get("identity") or "user_id:" + body.get("user_id", "")
            charges.append((self.identity_single, (endpoint.kind, app_id, who), 1))
        return charges

    def admit(self, endpoint: Endpoint, body: dict, bulk: bool, now: float) -> float:
        """Take the request's share from every bucket and return 0, or return the seconds to wait."""
        charges = self._charges(endpoint, body, bulk)
        wait = max((buckets.wait_seconds(key, n, now) for buckets, key, n in charges), default=0.0)
        if wait > 0:
            return wait
        for buckets, key, n in charges:
            buckets.add(key, n, now)
        return 0.0
