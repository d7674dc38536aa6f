"""The store of rejected records (rejected.py) against a real S3-compatible server on 127.0.0.1 (moto's standalone
server, integration_tests/bucket.py): what a file holds and where it goes, formats and compression, retries then
StorageError, the check's write-list-delete, credentials (keys, the AWS chain, a role through STS), and that no
secret is ever shown. The config rules of object_storage_config against the spec are in test_spec.py."""

from __future__ import annotations

import http.client
import logging
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from airbyte_cdk.models import ConfiguredAirbyteCatalog, ConfiguredAirbyteCatalogSerializer
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sts.models import sts_backends

from destination_heap_analytics import rejected
from destination_heap_analytics.rejected import (
    MAX_ATTEMPTS,
    RejectedRecord,
    StorageError,
    check_store,
    explain,
    open_store,
    parse_storage_config,
)
from integration_tests.bucket import SECRET_ACCESS_KEY, LocalBucket

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture
def bucket() -> Iterator[LocalBucket]:
    with LocalBucket() as local:
        yield local


@pytest.fixture(autouse=True)
def no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Whatever AWS settings this machine has play no part: no keys, files or instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def catalog(*streams: tuple[str, str | None], sync_id: int | None = 42, generation_id: int | None = 3):
    return ConfiguredAirbyteCatalogSerializer.load(
        {
            "streams": [
                {
                    "stream": {
                        "name": name,
                        "namespace": namespace,
                        "json_schema": {},
                        "supported_sync_modes": ["incremental"],
                    },
                    "sync_mode": "incremental",
                    "destination_sync_mode": "append",
                    **({"sync_id": sync_id} if sync_id is not None else {}),
                    **(
                        {"generation_id": generation_id, "minimum_generation_id": 0}
                        if generation_id is not None
                        else {}
                    ),
                }
                for name, namespace in (streams or (("users", None),))
            ]
        }
    )


def storage(bucket: LocalBucket, **overrides: Any):
    return parse_storage_config({"object_storage_config": bucket.storage(**overrides)})


def rejection(data: Any, stream: str = "users", namespace: str | None = None, reason: str = "missing_identity"):
    return RejectedRecord(stream, namespace, data, 1_700_000_000_123, reason, "email", explain(reason))


def test_a_rejected_record_is_stored_in_airbytes_columns_under_the_job_folder(bucket):
    store = open_store(storage(bucket), catalog())
    store.add(rejection({"email": None, "name": "Ada", "visits": 3}))
    store.add(
        RejectedRecord(
            "users",
            None,
            {"email": "x@example.com", "rejected_field": "its own"},
            5,
            "rejected_by_heap",
            None,
            "Heap refused it.",
        )
    )
    assert bucket.keys() == []  # buffered until persist
    store.persist()
    keys = bucket.keys()
    assert len(keys) == 1 and keys[0].startswith("rejected/42/users/") and keys[0].endswith("_1.csv"), keys
    header = bucket.read(keys[0]).decode().splitlines()[0]
    assert header == "_airbyte_raw_id,_airbyte_extracted_at,_airbyte_meta,_airbyte_generation_id,_airbyte_data"
    first, second = bucket.rows()
    assert first["_airbyte_raw_id"] != second["_airbyte_raw_id"]
    for row in (first, second):
        assert re.fullmatch(UUID, row["_airbyte_raw_id"])
        assert row["_airbyte_meta"] == {"sync_id": 42, "changes": []}
        assert row["_airbyte_generation_id"] == "3"
    assert first["_airbyte_extracted_at"] == "1700000000123"
    assert first["_airbyte_data"] == {
        "email": None,
        "name": "Ada",
        "visits": 3,
        "rejected_reason": "missing_identity",
        "rejected_field": "email",
        "rejected_message": "The record has no identity in the identity column.",
    }
    assert second["_airbyte_data"] == {
        "email": "x@example.com",
        "rejected_reason": "rejected_by_heap",
        "rejected_message": "Heap refused it.",
    }  # no column at fault: no rejected_field


def test_each_persist_writes_a_new_part_and_an_empty_one_writes_nothing(bucket):
    store = open_store(storage(bucket), catalog())
    store.persist()
    assert bucket.keys() == []
    store.add(rejection({"n": 1}))
    store.persist()
    store.add(rejection({"n": 2}))
    store.persist()
    store.persist()
    keys = bucket.keys()
    assert [key.rsplit("_", 1)[1] for key in keys] == ["1.csv", "2.csv"]
    assert [row["_airbyte_data"]["n"] for row in bucket.rows()] == [1, 2]


def test_streams_and_namespaces_have_folders_of_their_own(bucket):
    store = open_store(storage(bucket), catalog(("users", None), ("users", "crm"), ("Café/Orders", "shop a")))
    store.add(rejection({"n": 1}))
    store.add(rejection({"n": 2}, namespace="crm"))
    store.add(rejection({"n": 3}, stream="Café/Orders", namespace="shop a"))
    store.persist()
    folders = [key.rsplit("/", 1)[0] for key in bucket.keys()]
    # no namespace: no folder for it (as Airbyte's object storage); a name is one folder of S3-safe characters
    assert sorted(folders) == ["rejected/42/crm/users", "rejected/42/shop_a/Cafe_Orders", "rejected/42/users"]


def test_a_catalog_without_sync_id_gets_a_folder_of_the_run_and_no_generation(bucket):
    store = open_store(storage(bucket), catalog(sync_id=None, generation_id=None))
    store.add(rejection({"n": 1}))
    store.persist()
    (key,) = bucket.keys()
    assert re.fullmatch(r"rejected/no-job-id-\d{8}T\d{6}Z/users/\d{4}_\d{2}_\d{2}_\d+_1\.csv", key), key
    (row,) = bucket.rows()
    assert row["_airbyte_meta"] == {"sync_id": None, "changes": []}
    assert row["_airbyte_generation_id"] == ""


def test_a_record_of_a_stream_outside_the_catalog_goes_under_the_jobs_folder(bucket):
    store = open_store(storage(bucket), catalog())
    store.add(rejection({"n": 1}, stream="customers", reason="stream_not_in_catalog"))
    store.persist()
    assert [key.rsplit("/", 1)[0] for key in bucket.keys()] == ["rejected/42/customers"]


def test_jsonl_gzip_and_a_record_that_is_not_an_object(bucket):
    settings = {"format": {"format_type": "JSONL"}, "compression": {"compression_type": "GZIP"}}
    store = open_store(storage(bucket, **settings), catalog())
    store.add(rejection([1, 2], reason="record_not_an_object"))
    store.persist()
    (key,) = bucket.keys()
    assert key.endswith("_1.jsonl.gz")
    raw = bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read()
    assert raw[:2] == b"\x1f\x8b"  # gzip's magic number
    (row,) = bucket.rows()
    assert row["_airbyte_extracted_at"] == 1_700_000_000_123 and row["_airbyte_generation_id"] == 3
    assert row["_airbyte_data"]["data"] == [1, 2] and row["_airbyte_data"]["rejected_reason"] == "record_not_an_object"


def test_root_level_flattening_puts_the_records_fields_in_columns(bucket):
    store = open_store(storage(bucket, format={"format_type": "CSV", "flattening": "Root level flattening"}), catalog())
    store.add(rejection({"email": None, "plan": "pro"}))
    store.add(rejection({"address": {"city": "Paris"}}))
    store.persist()
    text = bucket.read(bucket.keys()[0]).decode().splitlines()
    assert text[0] == (
        "_airbyte_raw_id,_airbyte_extracted_at,_airbyte_meta,_airbyte_generation_id,email,plan,rejected_reason,"
        "rejected_field,rejected_message,address"
    )
    assert text[2].endswith(',"{""city"":""Paris""}"')


def test_path_and_file_name_formats_with_their_placeholders(bucket):
    store = open_store(
        storage(
            bucket,
            bucket_path="/deep/prefix/",
            path_format="${NAMESPACE}/{stream_name}/{year}-{month}/{uuid}",  # no closing slash: one is added
            file_name_format="{sync_id}-{date:yyyy_MM}-{part_number}{format_extension}",
        ),
        catalog(("users", "crm")),
    )
    store.add(rejection({"n": 1}, namespace="crm"))
    store.persist()
    (key,) = bucket.keys()
    assert re.fullmatch(rf"deep/prefix/crm/users/\d{{4}}-\d{{2}}/{UUID}/42-\d{{4}}_\d{{2}}-1\.csv", key), key


def test_a_large_buffer_is_written_at_once(bucket, monkeypatch):
    monkeypatch.setattr(rejected, "PART_BYTES", 2000)
    store = open_store(storage(bucket), catalog())
    for n in range(30):
        store.add(rejection({"n": n, "text": "x" * 100}))
    assert len(bucket.keys()) >= 2  # memory stays bounded: parts went before persist
    store.persist()
    assert [row["_airbyte_data"]["n"] for row in bucket.rows()] == list(range(30))


class FlakyFront:
    """An HTTP front for the bucket's server: answers 503 to the first `failures` requests, passes the rest
    through, and notes each request's method and path."""

    def __init__(self, bucket: LocalBucket, failures: int) -> None:
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                front.seen.append((self.command, self.path))
                if len(front.seen) <= front.failures:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", bucket.port, timeout=30)
                upstream.request(self.command, self.path, body, dict(self.headers))
                answer = upstream.getresponse()
                payload = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_DELETE = do_HEAD = do_POST = _handle

        self.failures = failures
        self.seen: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def front(bucket: LocalBucket):
    fronts: list[FlakyFront] = []

    def make(failures: int) -> FlakyFront:
        fronts.append(FlakyFront(bucket, failures))
        return fronts[-1]

    yield make
    for made in fronts:
        made.close()


def test_a_failed_write_is_retried(bucket, front):
    flaky = front(failures=2)
    store = open_store(storage(bucket, s3_endpoint=flaky.url), catalog())
    store.add(rejection({"n": 1}))
    store.persist()
    assert [method for method, _ in flaky.seen] == ["PUT", "PUT", "PUT"]
    assert len(bucket.rows()) == 1


def test_a_bucket_that_cannot_be_written_raises_storage_error_after_the_retries(bucket, front, caplog):
    down = front(failures=10**6)
    store = open_store(storage(bucket, s3_endpoint=down.url), catalog())
    store.add(rejection({"n": 1}))
    with caplog.at_level(logging.DEBUG), pytest.raises(StorageError) as failure:
        store.persist()
    assert len(down.seen) == MAX_ATTEMPTS
    assert bucket.name in str(failure.value) and failure.value.transient
    assert SECRET_ACCESS_KEY not in str(failure.value) + caplog.text
    assert bucket.keys() == []


def test_a_missing_bucket_is_named_and_not_transient(bucket):
    store = open_store(storage(bucket, s3_bucket_name="no-such-bucket"), catalog())
    store.add(rejection({"n": 1}))
    with pytest.raises(StorageError) as failure:
        store.persist()
    assert "no-such-bucket" in str(failure.value) and "does not exist" in str(failure.value)
    assert not failure.value.transient


def test_check_writes_lists_and_deletes_its_test_object(bucket, front, caplog):
    watched = front(failures=0)
    with caplog.at_level(logging.DEBUG):
        assert check_store(storage(bucket, s3_endpoint=watched.url, bucket_path="a/b/")) is None
    methods = [(method, path.split("?")[0]) for method, path in watched.seen]
    key = f"/{bucket.name}/a/b/_check_test"
    assert methods == [("PUT", key), ("GET", f"/{bucket.name}"), ("DELETE", key)]
    assert bucket.keys() == []
    assert SECRET_ACCESS_KEY not in caplog.text


def test_check_names_a_missing_bucket_and_an_unreachable_store(bucket, front):
    problem = check_store(storage(bucket, s3_bucket_name="no-such-bucket"))
    assert "no-such-bucket" in problem and "does not exist" in problem
    problem = check_store(storage(bucket, s3_endpoint=front(failures=10**6).url))
    assert bucket.name in problem and SECRET_ACCESS_KEY not in problem


def test_without_keys_the_standard_aws_chain_applies(bucket, monkeypatch):
    keyless = {"access_key_id": "", "secret_access_key": ""}  # as a form leaves them
    problem = check_store(storage(bucket, **keyless))
    assert "no AWS credentials" in problem and bucket.name in problem
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACHAINEXAMPLE0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret")
    assert check_store(storage(bucket, **keyless)) is None


def test_role_arn_is_assumed_through_sts(bucket, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", bucket.url)  # the local server answers STS too
    monkeypatch.setenv("AWS_ASSUME_ROLE_EXTERNAL_ID", "workspace-1234")
    role = "arn:aws:iam::123456789012:role/rejected-records-writer"
    store = open_store(storage(bucket, role_arn=role), catalog())
    store.add(rejection({"n": 1}))
    store.persist()
    assert len(bucket.rows()) == 1
    assumed = [r for r in sts_backends[DEFAULT_ACCOUNT_ID]["global"].assumed_roles if r.role_arn == role]
    assert assumed and assumed[-1].session_name == "airbyte-destination-heap-analytics"
    assert assumed[-1].external_id == "workspace-1234"


def test_storage_none_or_absent_opens_no_store():
    bare = ConfiguredAirbyteCatalog(streams=[])
    for config in ({}, {"object_storage_config": {"storage_type": "None"}}):
        assert open_store(parse_storage_config(config), bare) is None
        assert check_store(parse_storage_config(config)) is None
