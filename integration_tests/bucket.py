"""A real S3-compatible server on 127.0.0.1 for the rejected-records tests: moto's standalone server.

`LocalBucket` starts moto's server (Werkzeug, in a thread of the test process) on a free port, makes a bucket of
its own (moto's backends are per process: a unique name keeps tests apart), gives the `object_storage_config`
that points at it, and reads back what a run stored, whatever the file format.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import socket
import uuid
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

ACCESS_KEY_ID = "AKIAREJECTEDTESTKEY1"
SECRET_ACCESS_KEY = "rejected-records-test-secret-0123456789"  # tests check that no output ever shows it
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalBucket:
    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # its request lines would join the test's logs
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = f"rejected-{uuid.uuid4().hex[:12]}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> LocalBucket:
        self._server.start()
        self.client.create_bucket(Bucket=self.name)
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> LocalBucket:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def storage(self, **overrides: Any) -> dict[str, Any]:
        """An object_storage_config for this bucket (CSV, no compression, prefix `rejected`), with `overrides`."""
        return {
            "storage_type": "S3",
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
            "s3_bucket_name": self.name,
            "s3_bucket_region": "",
            "s3_endpoint": self.url,
            "bucket_path": "rejected",
            "format": {"format_type": "CSV", "flattening": "No flattening"},
            **overrides,
        }

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(entry["Key"] for page in pages for entry in page.get("Contents", ()))

    def read(self, key: str) -> bytes:
        body = self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
        return gzip.decompress(body) if key.endswith(".gz") else body

    def rows(self, prefix: str = "") -> list[dict[str, Any]]:
        """Every stored row under `prefix`, file by file in key order: JSONL as written, CSV with its JSON
        columns (`_airbyte_meta`, `_airbyte_data`) decoded."""
        rows: list[dict[str, Any]] = []
        for key in self.keys(prefix):
            text = self.read(key).decode()
            if ".jsonl" in key:
                rows += [json.loads(line) for line in text.splitlines()]
                continue
            for row in csv.DictReader(io.StringIO(text)):
                for column in ("_airbyte_meta", "_airbyte_data"):
                    if column in row:
                        row[column] = json.loads(row[column])
                rows.append(row)
        return rows
