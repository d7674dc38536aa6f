"""Rejected records in the user's bucket, end to end: the installed connector against the Heap stand-in and a local
S3-compatible server (moto's, integration_tests/bucket.py). Records without an identity and a record Heap refuses
land under `<bucket_path>/<sync_id>/<stream>/` in Airbyte's columns with their reasons, each before the STATE
that counts it leaves; a bucket that cannot be written stops the sync before such a STATE; check proves the
bucket writable and cleans up; a dry run stores nothing."""

from __future__ import annotations

import socket

from integration_tests.bucket import SECRET_ACCESS_KEY, LocalBucket
from integration_tests.support import (
    USER_API,
    assert_check_failed,
    catalog,
    config,
    interleave,
    people,
    person,
    run_connector,
    states_of,
)

SYNC_ID = 4217
GENERATION_ID = 3


def job_catalog() -> dict:
    """The catalog as the platform writes it for job 4217 (supportsRefreshes: sync_id and generation_id)."""
    written = catalog()
    written["streams"][0].update(sync_id=SYNC_ID, generation_id=GENERATION_ID, minimum_generation_id=0)
    return written


class BucketWatcher:
    """What the bucket holds (each stored record's `visits`) at the moment each STATE leaves the connector."""

    def __init__(self, bucket: LocalBucket) -> None:
        self.bucket = bucket
        self.held_at_states: list[set[int]] = []

    def on_message(self, message: dict) -> None:
        if message["type"] == "STATE":
            self.held_at_states.append({row["_airbyte_data"]["visits"] for row in self.bucket.rows()})


def test_rejected_records_land_in_the_bucket_before_the_state_that_counts_them(heap, bucket):
    rows = people(20)
    for missing in (3, 11):
        del rows[missing]["email"]  # no identity: skipped by the mapping
    refused = rows[7]["email"]
    heap.reject_when(lambda item: "postBody.users[0].identity is too long" if item["identity"] == refused else None)
    messages = interleave(rows, every=5)
    watcher = BucketWatcher(bucket)
    result = run_connector(
        "write",
        config(heap, USER_API, object_storage_config=bucket.storage()),
        job_catalog(),
        messages,
        on_message=watcher.on_message,
        timeout=120,
    )

    result.assert_clean(SECRET_ACCESS_KEY)
    assert result.states == states_of(messages)
    assert [s["rejectedRecordCount"] for s in result.destination_stats] == [1.0, 1.0, 1.0, 0.0]
    # each STATE left only once the records it counts as rejected were in the bucket
    for held, expected in zip(watcher.held_at_states, [{3}, {3, 7}, {3, 7, 11}, {3, 7, 11}], strict=True):
        assert expected <= held, f"a STATE left before rejected records {expected - held} were stored"
    keys = bucket.keys()
    assert keys and all(key.startswith(f"rejected/{SYNC_ID}/users/") and key.endswith(".csv") for key in keys), keys
    stored = {row["_airbyte_data"]["visits"]: row for row in bucket.rows()}
    assert set(stored) == {3, 7, 11}
    for visits, row in stored.items():
        assert set(row) == {
            "_airbyte_raw_id", "_airbyte_extracted_at", "_airbyte_meta", "_airbyte_generation_id", "_airbyte_data"
        }  # fmt: skip
        assert row["_airbyte_meta"] == {"sync_id": SYNC_ID, "changes": []}
        assert row["_airbyte_generation_id"] == str(GENERATION_ID)
        assert row["_airbyte_extracted_at"] == "1700000000000"
        received = {k: v for k, v in row["_airbyte_data"].items() if not k.startswith("rejected_")}
        assert received == rows[visits]  # the record as received
    assert stored[3]["_airbyte_data"]["rejected_reason"] == "missing_identity"
    assert stored[3]["_airbyte_data"]["rejected_field"] == "email"
    assert "no identity" in stored[11]["_airbyte_data"]["rejected_message"]
    assert stored[7]["_airbyte_data"]["rejected_reason"] == "rejected_by_heap"
    assert "rejected_field" not in stored[7]["_airbyte_data"]
    assert "identity is too long" in stored[7]["_airbyte_data"]["rejected_message"]


def test_a_bucket_that_cannot_be_written_stops_the_sync_before_the_state_counting_its_records(heap):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    unreachable = LocalBucket().storage(s3_endpoint=closed)
    rows = people(15)
    del rows[7]["email"]
    messages = interleave(rows, every=5)
    result = run_connector(
        "write", config(heap, USER_API, object_storage_config=unreachable), job_catalog(), messages, timeout=120
    )

    assert result.returncode != 0, result.describe()
    (error,) = result.errors
    assert unreachable["s3_bucket_name"] in error["message"] and "cannot connect" in error["message"]
    assert error["failure_type"] == "transient_error"
    # the first STATE counts no rejected record and may leave; none from the one counting record 7 on
    assert result.states in ([], states_of(messages)[:1]), result.describe()
    assert SECRET_ACCESS_KEY not in result.stdout + result.stderr


def test_check_proves_the_bucket_writable_and_names_a_missing_one(heap, bucket):
    written = run_connector("check", config(heap, USER_API, object_storage_config=bucket.storage()))
    assert [status["status"] for status in written.statuses] == ["SUCCEEDED"], written.describe()
    assert bucket.keys() == []  # its test object is gone
    assert any(f"s3://{bucket.name}/rejected/" in line for line in written.log_lines("INFO"))

    missing = bucket.storage(s3_bucket_name="no-such-rejected-bucket")
    refused = run_connector("check", config(heap, USER_API, object_storage_config=missing))
    assert_check_failed(refused, ["no-such-rejected-bucket", "does not exist"])
    assert SECRET_ACCESS_KEY not in refused.stdout + refused.stderr + written.stdout + written.stderr


def test_a_dry_run_stores_nothing(heap, bucket):
    rows = people(6)
    del rows[2]["email"]
    messages = interleave(rows, every=3)
    result = run_connector(
        "write",
        config(heap, USER_API, object_storage_config=bucket.storage(), dry_run=True),
        job_catalog(),
        messages,
    )
    result.assert_clean()
    assert result.skipped == {"missing_identity (column email)": 1}
    assert bucket.keys() == [] and not heap.users


def test_every_record_merged_into_an_item_heap_refuses_is_stored(heap, bucket):
    """Updates of one user merge into one item (README, per-key order); refused, each of its records is rejected
    and stored as it came."""
    updates = [person(1, plan=f"secret-plan-{n}", visits=100 + n) for n in range(3)]
    heap.reject_when(
        lambda item: "postBody.users[0].identity is too long" if item["identity"] == updates[0]["email"] else None
    )
    messages = interleave([*updates, *people(3, start=2)], every=6)
    result = run_connector(
        "write", config(heap, USER_API, object_storage_config=bucket.storage()), job_catalog(), messages
    )

    result.assert_clean(SECRET_ACCESS_KEY)
    assert [s["rejectedRecordCount"] for s in result.destination_stats] == [3.0]
    stored = sorted(bucket.rows(), key=lambda row: row["_airbyte_data"]["visits"])
    assert [
        {k: v for k, v in row["_airbyte_data"].items() if not k.startswith("rejected_")} for row in stored
    ] == updates
    assert {row["_airbyte_data"]["rejected_reason"] for row in stored} == {"rejected_by_heap"}
