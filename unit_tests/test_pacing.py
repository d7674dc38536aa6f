"""Pacing against Heap's limits, on a fake clock: how long each request is held back."""

import pytest

from destination_heap_analytics.config import parse_config
from destination_heap_analytics.pacing import Pacer

# Heap's published limits (docs/heap-api.md), written out here so that a changed limit in the code shows
HEAP_BULK_TRACK_EVENTS_PER_MINUTE = 15_000  # per environment
HEAP_BULK_TRACK_EVENTS_PER_MINUTE_PER_IDENTITY = 1_000
HEAP_SINGLE_REQUESTS_PER_30S_PER_IDENTITY = 30


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def pacer(clock: FakeClock, **kwargs) -> Pacer:
    settings = {"app_rate_per_second": 250, "identity_rate_per_second": 0, "burst": 1000, "identity_burst": 0}
    settings.update(kwargs)
    return Pacer(**settings, clock=clock, sleep=clock.sleep)


def default_pacer(clock: FakeClock, bulk: bool = True, batch_size: int = 1000) -> Pacer:
    """The track pacer a sync builds from a config that leaves track_events_per_minute at its default."""
    config = parse_config({"app_id": "11", "api": {"api_type": "track", "identity_column": "u", "event_name": "e"}})
    paced = Pacer.for_api("track", bulk, config.track_events_per_minute, batch_size, clock.sleep, clock)
    assert paced is not None
    return paced


def test_bulk_track_by_default_sustains_heaps_published_rate_and_no_more():
    clock = FakeClock()
    paced = default_pacer(clock)
    start = clock.now
    for _ in range(31):
        paced.wait_for([f"user-{i}" for i in range(1000)])
    # the first batch goes at once (burst), then the other 30,000 events at Heap's rate
    assert clock.now - start == pytest.approx(30_000 / (HEAP_BULK_TRACK_EVENTS_PER_MINUTE / 60))


def test_bulk_track_holds_one_identity_to_heaps_per_identity_rate():
    """1,250 events of one identity in batches of 50: a quarter of a minute's allowance at once, then the
    other 1,000 at Heap's per-identity rate; the per-environment rate would let them through in 5 s."""
    clock = FakeClock()
    paced = default_pacer(clock, batch_size=50)
    for _ in range(25):
        paced.wait_for(["busy"] * 50)
    assert clock.now - 1000.0 == pytest.approx(1000 / (HEAP_BULK_TRACK_EVENTS_PER_MINUTE_PER_IDENTITY / 60))


def test_single_requests_hold_one_identity_to_heaps_rate():
    """90 single requests of one identity: 30 at once, then one a second (30 per 30 s); another identity is
    not held back."""
    clock = FakeClock()
    paced = default_pacer(clock, bulk=False, batch_size=1)
    for _ in range(90):
        paced.wait_for(["busy"])
    assert clock.now - 1000.0 == pytest.approx(60 / (HEAP_SINGLE_REQUESTS_PER_30S_PER_IDENTITY / 30))
    before = clock.now
    paced.wait_for(["other"])
    assert clock.now == before


def test_a_batch_never_leaves_before_the_bucket_has_room():
    clock = FakeClock()
    paced = pacer(clock)
    assert paced.wait_for(["u"] * 1000) == 0.0
    sent_at = clock.now
    assert paced.wait_for(["u"] * 500) == pytest.approx(2.0)  # the wait is returned, for the sync's summary
    assert clock.now - sent_at == pytest.approx(2.0)


def test_per_identity_limit_holds_back_a_busy_identity_only():
    clock = FakeClock()
    paced = pacer(clock, app_rate_per_second=0, identity_rate_per_second=1.0, identity_burst=30)
    for _ in range(30):
        paced.wait_for(["busy"])
    assert clock.now == 1000.0  # a burst of 30 requests is allowed
    paced.wait_for(["busy"])
    assert clock.now == pytest.approx(1001.0)
    paced.wait_for(["other"])
    assert clock.now == pytest.approx(1001.0)


def test_throttling_slows_down_and_honours_retry_after():
    clock = FakeClock()
    paced = pacer(clock)
    paced.wait_for(["u"] * 1000)
    paced.throttled(retry_after=7.0)
    before = clock.now
    paced.wait_for(["u"])
    assert clock.now - before >= 7.0
    paced.accepted()


@pytest.mark.parametrize(
    "api_type, bulk, per_minute, paced",
    [
        ("track", True, 15000, True),
        ("track", True, 0, False),
        ("track", False, 15000, True),
        ("add_user_properties", False, 15000, True),
        ("add_user_properties", True, 15000, False),
        ("add_account_properties", False, 15000, False),
    ],
)
def test_pacing_applies_where_heap_publishes_a_limit(api_type, bulk, per_minute, paced):
    assert (Pacer.for_api(api_type, bulk, per_minute, 1000, sleep=lambda seconds: None) is not None) == paced


def steady_interval(paced: Pacer, clock: FakeClock, batches: int = 5) -> float:
    """Seconds between batches of 1000 once the burst is spent."""
    for _ in range(2):
        paced.wait_for(["u"] * 1000)
    started = clock.now
    for _ in range(batches):
        paced.wait_for(["u"] * 1000)
    return (clock.now - started) / batches


def test_a_429_without_retry_after_slows_the_pace_and_accepted_requests_restore_it():
    clock = FakeClock()
    paced = pacer(clock)
    assert steady_interval(paced, clock) == pytest.approx(4.0)  # 1000 events at 250 a second
    paced.throttled(retry_after=None)
    assert steady_interval(paced, clock) == pytest.approx(4.0 / 0.7, rel=0.01)  # slower: 70% of the rate
    for _ in range(15):  # each accepted request gives back 2% of the configured rate
        paced.accepted()
    assert steady_interval(paced, clock) == pytest.approx(4.0)


def test_repeated_429s_slow_down_to_a_floor_and_never_stop():
    clock = FakeClock()
    paced = pacer(clock)
    for _ in range(50):
        paced.throttled(retry_after=None)
    assert steady_interval(paced, clock) == pytest.approx(40.0)  # 10% of the rate, the floor
