"""Pacing against Heap's limits, on a fake clock: how long each request is held back."""

import pytest

from destination_heap_analytics.pacing import Pacer


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


def test_bulk_track_sustains_the_configured_rate_and_no_more():
    clock = FakeClock()
    paced = pacer(clock)
    start = clock.now
    for _ in range(31):
        paced.wait_for([f"user-{i}" for i in range(1000)])
    # the first batch goes at once (burst), then one batch per 4 s at 250 events/s
    assert clock.now - start == pytest.approx(120.0)


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
