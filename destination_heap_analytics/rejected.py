"""Rejected records in the user's bucket: `object_storage_config`, as Airbyte's activation destinations have it.

A record Heap cannot take (skipped by the mapping, too large, refused by Heap) is counted on the STATE after it;
with storage configured it is also stored, so that the user who sees "N records rejected" can see which and why.
The files hold Airbyte's columns (`_airbyte_raw_id`, `_airbyte_extracted_at`, `_airbyte_meta`,
`_airbyte_generation_id`, `_airbyte_data`); `_airbyte_data` is the record as received with `rejected_reason`,
`rejected_field` (where one column is at fault) and `rejected_message` added. They go under
`<bucket_path>/<path_format>` (by default `{sync_id}/{namespace}/{stream_name}/`: the platform links the user to
`s3://<bucket>/<bucket_path>/<job id>/`, and the configured streams' sync_id is the job id).

The store buffers what it is given (`add`) and writes it as one file a stream (`persist`), a STATE leaving only
after the rejected records before it are in the bucket; a buffer grown past PART_BYTES is written at once, so
memory stays bounded. Requests are retried by botocore; a bucket that still cannot be written is a
`StorageError` naming the bucket, never a secret.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import re
import time
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import boto3
import botocore.session
import orjson
from airbyte_cdk.models import ConfiguredAirbyteCatalog
from botocore.config import Config
from botocore.credentials import AssumeRoleCredentialFetcher, CredentialProvider, DeferredRefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from destination_heap_analytics.config import ConfigError, specification

logger = logging.getLogger("airbyte")
# botocore's own warnings (a failed credential refresh, say) come with tracebacks; what failed is told once, as a
# StorageError naming the bucket
logging.getLogger("botocore").setLevel(logging.CRITICAL)

FIELD = "object_storage_config"
COLUMNS = ("_airbyte_raw_id", "_airbyte_extracted_at", "_airbyte_meta", "_airbyte_generation_id", "_airbyte_data")
DEFAULT_PATH_FORMAT = "{sync_id}/{namespace}/{stream_name}/"
DEFAULT_FILE_NAME_FORMAT = "{date}_{timestamp}_{part_number}{format_extension}"
PATH_PLACEHOLDERS = (
    "sync_id", "namespace", "stream_name", "year", "month", "day", "hour", "minute", "second", "millisecond", "epoch",
    "uuid",
)  # fmt: skip
FILE_NAME_PLACEHOLDERS = ("date", "date:yyyy_MM", "timestamp", "part_number", "sync_id", "format_extension")
# `{name}`, or `${NAME}` as Airbyte's object storage writes path variables; either case
PLACEHOLDER = re.compile(r"\$?\{([^{}]*)\}")
CHECK_OBJECT = "_check_test"
PART_BYTES = 8 << 20  # buffered rows past this are written at once: memory stays bounded
MAX_ATTEMPTS = 5  # each request, retried by botocore (standard mode: backoff with jitter) on throttling, 5xx, network
CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 30  # waiting for an answer; a file's upload itself is not bounded by it
STS_REGION = "us-east-1"  # STS's global endpoint, where the bucket's region is left to the credential chain
EXTERNAL_ID_VARIABLE = "AWS_ASSUME_ROLE_EXTERNAL_ID"  # what Airbyte Cloud sets for role_arn (the workspace ID)
S3_UNSAFE = re.compile(r"[^A-Za-z0-9!_.*'()&$@=;:+,?\-]")  # Airbyte's S3-safe characters, and no "/": one segment
# Reasons the records are rejected for, in words (the reason names are the connector's, as its log counts them)
REASON_MESSAGES = {
    "missing_identity": "The record has no identity in the identity column.",
    "identity_too_long": "The identity is longer than Heap takes (255 characters).",
    "invalid_identity_type": "The identity is neither text nor a whole number.",
    "missing_event": "The record has no event name in the event column.",
    "event_too_long": "The event name is longer than Heap takes (1023 characters).",
    "invalid_event_type": "The event name is neither text nor a number.",
    "invalid_timestamp": "The timestamp is not a time the connector can read.",
    "missing_account_id": "The record has no account ID in the account ID column.",
    "account_id_too_long": "The account ID is longer than Heap takes (255 characters).",
    "invalid_account_id_type": "The account ID is neither text nor a whole number.",
    "missing_user_id": "The record has no user_id in the user ID column.",
    "invalid_user_id": "The user_id is not a whole number from 0 to 2^53-1, which Heap's user_id is.",
    "non_unique_identity": "The identity is a placeholder (null, undefined, user) Heap would merge users on.",
    "no_properties": "The record has no property to set.",
    "record_not_an_object": "The record's data is not a JSON object.",
    "too_deeply_nested": "A field the mapping uses is nested deeper than the connector can read.",
    "rejected_by_heap": "Heap refused the record on its own (the records around it were delivered).",
    "item_too_large": "The Heap item made of the record is 4 MB or more, more than a request to Heap holds.",
}


class StorageError(Exception):
    """The bucket could not be written (after retries). The message names the bucket and never a secret;
    `transient`: a network or server failure that a later run may not meet (else a config mistake)."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class StorageConfig:
    """The S3 branch of object_storage_config, parsed and checked."""

    bucket: str
    bucket_path: str  # without slashes around it; "" for the bucket's root
    region: str | None
    endpoint: str | None
    role_arn: str | None
    jsonl: bool  # else CSV
    flattened: bool  # the record's top-level fields as columns, instead of _airbyte_data
    gzip: bool
    path_format: str
    file_name_format: str
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)

    @property
    def location(self) -> str:
        """Where the files go, as a user finds them (no secret in it)."""
        return f"s3://{self.bucket}/{self.bucket_path}" + ("/" if self.bucket_path else "")

    @property
    def extension(self) -> str:
        return (".jsonl" if self.jsonl else ".csv") + (".gz" if self.gzip else "")


@dataclass(frozen=True)
class RejectedRecord:
    """A record Heap does not get, as received, and why (reason and field as the log counts them)."""

    stream: str
    namespace: str | None
    data: Any
    emitted_at: int  # ms
    reason: str
    field: str | None
    message: str


def explain(reason: str) -> str:
    """The reason a record was rejected for, in words."""
    return REASON_MESSAGES.get(reason, reason)


def parse_storage_config(raw: Mapping[str, Any]) -> StorageConfig | None:
    """object_storage_config of a config (the JSON the user wrote): None when absent or storage_type None. The
    rules are the spec's, with messages that name the field."""
    storage = raw.get(FIELD)
    if storage is None:
        return None
    if not isinstance(storage, Mapping):
        raise ConfigError(f'{FIELD} must be an object such as {{"storage_type": "None"}}, or left out.')
    kind = storage.get("storage_type")
    if kind == "None":
        return None
    if kind != "S3":
        raise ConfigError(f'{FIELD}.storage_type must be "None" or "S3", got {_shown(kind)}.')
    access_key_id = _text(storage, "access_key_id", secret=True)
    secret_access_key = _text(storage, "secret_access_key", secret=True)
    if (access_key_id is None) != (secret_access_key is None):
        raise ConfigError(
            f"{FIELD}: give both access_key_id and secret_access_key, or neither (the standard AWS credential "
            "chain then applies)."
        )
    bucket = _text(storage, "s3_bucket_name", required=True)
    bucket_path = _text(storage, "bucket_path", required=True, blank=True)
    region = _text(storage, "s3_bucket_region", required=True, blank=True)
    if region not in _s3_branch()["properties"]["s3_bucket_region"]["enum"]:
        raise ConfigError(
            f"{FIELD}.s3_bucket_region {_shown(region)} is not an AWS region: {_FIELD_HELP['s3_bucket_region']}"
        )
    return StorageConfig(
        bucket=bucket,
        bucket_path=bucket_path.strip("/"),
        region=region or None,
        endpoint=_endpoint(_text(storage, "s3_endpoint")),
        role_arn=_text(storage, "role_arn"),
        jsonl=_format(storage.get("format")) == "JSONL",
        flattened=storage["format"].get("flattening") == "Root level flattening",
        gzip="compression" in storage and _compression(storage["compression"]),
        path_format=_pattern(storage, "path_format", DEFAULT_PATH_FORMAT, PATH_PLACEHOLDERS),
        file_name_format=_pattern(storage, "file_name_format", DEFAULT_FILE_NAME_FORMAT, FILE_NAME_PLACEHOLDERS),
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
    )


def _s3_branch() -> dict[str, Any]:
    """The spec's S3 option of object_storage_config: the regions it lists are the ones taken."""
    options = specification()["connectionSpecification"]["properties"][FIELD]["oneOf"]
    return next(option for option in options if option["properties"]["storage_type"]["enum"] == ["S3"])


def _shown(value: Any) -> str:
    """A value of a non-secret field, for a message: short, and only if it is short text."""
    return repr(value) if isinstance(value, str) and len(value) <= 40 else type(value).__name__


def _text(
    storage: Mapping[str, Any], name: str, required: bool = False, blank: bool = False, secret: bool = False
) -> str | None:
    """A text field: None when absent (or empty, unless `blank` allows it); a secret's value is never shown."""
    if name not in storage and not required:
        return None
    value = storage.get(name)
    if not isinstance(value, str):
        what = "missing" if name not in storage else "null" if value is None else "not text"
        raise ConfigError(f"{FIELD}.{name} is {what}: {_FIELD_HELP[name]}")
    if not value.strip() and not blank:
        if required:
            raise ConfigError(f"{FIELD}.{name} is empty: {_FIELD_HELP[name]}")
        return None
    if secret and not (value.isascii() and value.isprintable()):
        raise ConfigError(f"{FIELD}.{name} holds characters no AWS key has: paste it again as AWS shows it.")
    return value.strip()


_FIELD_HELP = {
    "access_key_id": "an AWS access key ID, or leave it out for the standard AWS credential chain.",
    "secret_access_key": "the secret access key of the access key ID, or leave it out.",
    "s3_bucket_name": "name the bucket where rejected records are stored.",
    "bucket_path": 'the prefix for the files in the bucket, or "" for its root.',
    "s3_bucket_region": 'the bucket\'s AWS region, such as "us-east-1", or "" for the one the credential chain gives.',
    "s3_endpoint": "the URL of an S3-compatible store, or leave it out for AWS S3.",
    "role_arn": "the ARN of an AWS role to assume, or leave it out.",
    "path_format": f"folders with placeholders, such as {DEFAULT_PATH_FORMAT}.",
    "file_name_format": f"a file name with placeholders, such as {DEFAULT_FILE_NAME_FORMAT}.",
}


def _endpoint(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parts = parse_url(value)
    except LocationParseError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.host:
        raise ConfigError(f"{FIELD}.s3_endpoint must be an http(s) URL such as https://minio.example.com:9000.")
    if parts.auth or parts.query or parts.fragment:  # credentials belong in the key fields, where they are masked
        raise ConfigError(
            f"{FIELD}.s3_endpoint must be a plain URL: no credentials, query or fragment (give the keys in "
            "access_key_id and secret_access_key)."
        )
    return value.rstrip("/")


def _format(value: Any) -> str:
    kind = value.get("format_type") if isinstance(value, Mapping) else None
    if kind not in ("CSV", "JSONL"):
        raise ConfigError(
            f'{FIELD}.format must be {{"format_type": "CSV", "flattening": "No flattening"}} or '
            '{"format_type": "JSONL"}.'
        )
    flattening = value.get("flattening", None if kind == "CSV" else "No flattening")
    if flattening not in ("No flattening", "Root level flattening"):
        raise ConfigError(f'{FIELD}.format.flattening must be "No flattening" or "Root level flattening".')
    return kind


def _compression(value: Any) -> bool:
    """True for GZIP."""
    kind = value.get("compression_type") if isinstance(value, Mapping) else None
    if kind not in ("No Compression", "GZIP"):
        raise ConfigError(f'{FIELD}.compression must be {{"compression_type": "No Compression"}} or "GZIP".')
    return kind == "GZIP"


def _pattern(storage: Mapping[str, Any], name: str, default: str, placeholders: tuple[str, ...]) -> str:
    pattern = _text(storage, name) or default
    known = {placeholder.lower() for placeholder in placeholders}
    for found in PLACEHOLDER.findall(pattern):
        if found.lower() not in known:
            raise ConfigError(
                f"{FIELD}.{name} has the placeholder {{{found}}}, which is not one of: "
                + ", ".join(f"{{{placeholder}}}" for placeholder in placeholders)
                + "."
            )
    if name == "file_name_format" and "{part_number}" not in pattern.lower():
        raise ConfigError(
            f"{FIELD}.file_name_format needs {{part_number}}: each file of a stream gets its own number, "
            "so that no file replaces another."
        )
    return pattern


# ------------------------------------------------------------------------------------------------------------
# The bucket


class _AssumedRole(CredentialProvider):
    """role_arn's credentials: STS AssumeRole with the source credentials, renewed before they expire."""

    METHOD = "assume-role"
    CANONICAL_NAME = "object-storage-role"

    def __init__(self, fetcher: AssumeRoleCredentialFetcher) -> None:
        super().__init__()
        self._fetcher = fetcher

    def load(self) -> DeferredRefreshableCredentials:
        return DeferredRefreshableCredentials(refresh_using=self._fetcher.fetch_credentials, method=self.METHOD)


def _s3_client(storage: StorageConfig) -> Any:
    """An S3 client with the config's keys (else the standard chain), through role_arn where set."""
    session = _botocore_session(storage)
    if storage.access_key_id is not None:
        session.set_credentials(storage.access_key_id, storage.secret_access_key)
    if storage.role_arn:
        source = session.get_credentials()
        if source is None:
            raise NoCredentialsError()
        extra = {"RoleSessionName": "airbyte-destination-heap-analytics"}
        if os.environ.get(EXTERNAL_ID_VARIABLE):
            extra["ExternalId"] = os.environ[EXTERNAL_ID_VARIABLE]
        sts = partial(session.create_client, region_name=session.get_config_variable("region") or STS_REGION)
        fetcher = AssumeRoleCredentialFetcher(sts, source, storage.role_arn, extra_args=extra)
        session = _botocore_session(storage)
        session.get_component("credential_provider").insert_before("env", _AssumedRole(fetcher))
    config = Config(
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        s3={"addressing_style": "path"} if storage.endpoint else None,  # S3-compatible stores: bucket in the path
    )
    return boto3.session.Session(botocore_session=session).client("s3", endpoint_url=storage.endpoint, config=config)


def _botocore_session(storage: StorageConfig) -> botocore.session.Session:
    session = botocore.session.Session()
    if storage.region:
        session.set_config_variable("region", storage.region)
    return session


def _failure(storage: StorageConfig, doing: str, error: Exception) -> StorageError:
    """What went wrong with the bucket, in words that name it and never a secret (boto's own texts may quote
    request details, so only the error's code is kept)."""
    where = f"bucket {storage.bucket}" + (f" at {storage.endpoint}" if storage.endpoint else "")
    if isinstance(error, NoCredentialsError):
        return StorageError(
            f"Cannot {doing} {where}: no AWS credentials. Set {FIELD}.access_key_id and secret_access_key, or "
            "give this host credentials through the standard AWS chain (environment, instance profile).",
            transient=False,
        )
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", "unknown"))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket", "404"):
            return StorageError(
                f"Cannot {doing} {where}: the bucket does not exist. Create it or fix {FIELD}.s3_bucket_name.",
                transient=False,
            )
        if error.operation_name == "AssumeRole":
            return StorageError(f"Cannot {doing} {where}: assuming {FIELD}.role_arn failed ({code}).", transient=False)
        if status in (401, 403) or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(
                f"Cannot {doing} {where}: access denied ({code}). Check the keys (or role) and that they may "
                "write, list and delete objects in the bucket.",
                transient=False,
            )
        return StorageError(
            f"Cannot {doing} {where}: the store answered {code} (HTTP {status}).",
            transient=status is None or status >= 500,
        )
    if isinstance(error, EndpointConnectionError):
        return StorageError(
            f"Cannot {doing} {where}: cannot connect to the store ({MAX_ATTEMPTS} attempts).", transient=True
        )
    return StorageError(f"Cannot {doing} {where}: {type(error).__name__} ({MAX_ATTEMPTS} attempts).", transient=True)


def check_store(storage: StorageConfig | None) -> str | None:
    """Prove the bucket is writable: write, list and delete `<bucket_path>/_check_test`. None if it is; else
    what is wrong, naming the bucket."""
    if storage is None:
        return None
    key = _key(storage.bucket_path, CHECK_OBJECT)
    body = _compressed(storage, b'{"data":1}')
    try:
        client = _s3_client(storage)
        client.put_object(Bucket=storage.bucket, Key=key, Body=body)
        try:
            listed = client.list_objects_v2(Bucket=storage.bucket, Prefix=key)
            if not any(entry["Key"] == key for entry in listed.get("Contents", ())):
                return f"Wrote {key} in bucket {storage.bucket}, but listing the bucket does not show it."
        finally:
            client.delete_object(Bucket=storage.bucket, Key=key)
    except (BotoCoreError, ClientError) as error:
        return str(_failure(storage, "write to", error))
    logger.info(f"Rejected records can be stored in {storage.location} (wrote, listed and deleted {key}).")
    return None


class RejectedStore:
    """The rejected records of one sync, buffered by stream and written as files into the bucket."""

    def __init__(self, storage: StorageConfig, streams: Mapping[tuple[str, str | None], tuple[Any, Any]]) -> None:
        """`streams`: each catalog stream's (sync_id, generation_id), None where the catalog has none."""
        self._storage = storage
        self._streams = streams
        # every stream of a job has its job's sync_id: a stream outside the catalog takes it too
        self._job_sync_id = next((sync_id for sync_id, _ in streams.values() if sync_id is not None), None)
        self._started = datetime.now(UTC)
        self._client: Any = None  # made at the first write: a sync without rejected records never needs it
        self._rows: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
        self._buffered_bytes = 0
        self._parts: dict[tuple[str, str | None], int] = {}

    def add(self, record: RejectedRecord) -> None:
        """Buffer one rejected record; past PART_BYTES, everything buffered is written (may raise StorageError)."""
        key = (record.stream, record.namespace)
        sync_id, generation_id = self._streams.get(key, (self._job_sync_id, None))
        data = dict(record.data) if isinstance(record.data, dict) else {"data": record.data}
        data["rejected_reason"] = record.reason
        data.pop("rejected_field", None)  # the record's own, if any: only the connector's says which column
        if record.field is not None:
            data["rejected_field"] = record.field
        data["rejected_message"] = record.message
        row = {
            "_airbyte_raw_id": str(uuid.uuid4()),
            "_airbyte_extracted_at": record.emitted_at,
            "_airbyte_meta": {"sync_id": sync_id, "changes": []},
            "_airbyte_generation_id": generation_id,
            "_airbyte_data": data,
        }
        self._rows.setdefault(key, []).append(row)
        self._buffered_bytes += len(_json(data)) + 200
        if self._buffered_bytes >= PART_BYTES:
            self.persist()

    def persist(self) -> None:
        """Write every buffered record into the bucket, a file a stream; on return they are all there. Raises
        StorageError when the bucket cannot be written after retries."""
        for key in list(self._rows):
            rows = self._rows[key]
            part = self._parts.get(key, 0) + 1
            object_key = self._object_key(key, part)
            try:
                if self._client is None:
                    self._client = _s3_client(self._storage)
                self._client.put_object(Bucket=self._storage.bucket, Key=object_key, Body=self._file(rows))
            except (BotoCoreError, ClientError) as error:
                raise _failure(self._storage, "store rejected records in", error) from None
            self._parts[key] = part
            logger.info(f"{len(rows)} rejected records stored in s3://{self._storage.bucket}/{object_key}.")
            del self._rows[key]
        self._buffered_bytes = 0

    def _file(self, rows: list[dict[str, Any]]) -> bytes:
        storage = self._storage
        if storage.flattened:
            rows = [{**{c: row[c] for c in COLUMNS[:-1]}, **row["_airbyte_data"]} for row in rows]
        if storage.jsonl:
            text = b"".join(_json(row) + b"\n" for row in rows)
        else:
            header = list(dict.fromkeys(name for row in rows for name in row))
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(header)
            for row in rows:
                writer.writerow([_cell(row.get(name)) for name in header])
            text = out.getvalue().encode()
        return _compressed(storage, text)

    def _object_key(self, stream: tuple[str, str | None], part: int) -> str:
        name, namespace = stream
        sync_id, _ = self._streams.get(stream, (self._job_sync_id, None))
        # without a job (a catalog written by hand, PyAirbyte): the sync's start, so each run has a folder of its own
        sync_text = str(sync_id) if sync_id is not None else f"no-job-id-{self._started:%Y%m%dT%H%M%SZ}"
        started = self._started
        path_values = {
            "sync_id": sync_text,
            "namespace": _segment(namespace or ""),  # no namespace: no folder, as Airbyte's object storage does
            "stream_name": _segment(name),
            "year": f"{started.year}",
            "month": f"{started.month:02d}",
            "day": f"{started.day:02d}",
            "hour": f"{started.hour:02d}",
            "minute": f"{started.minute:02d}",
            "second": f"{started.second:02d}",
            "millisecond": f"{started.microsecond // 1000:04d}",
            "epoch": f"{int(started.timestamp() * 1000)}",
        }
        file_values = {
            "date": f"{started:%Y_%m_%d}",
            "date:yyyy_mm": f"{started:%Y_%m}",
            "timestamp": f"{time.time_ns() // 1_000_000}",
            "part_number": f"{part}",
            "sync_id": sync_text,
            "format_extension": self._storage.extension,
        }
        folders = _substitute(self._storage.path_format, path_values)
        return _key(self._storage.bucket_path, folders, _substitute(self._storage.file_name_format, file_values))


def open_store(storage: StorageConfig | None, catalog: ConfiguredAirbyteCatalog) -> RejectedStore | None:
    """The store of one sync, or None when no storage is configured. Nothing is written until a record is."""
    if storage is None:
        return None
    streams = {
        (configured.stream.name, configured.stream.namespace or None): (configured.sync_id, configured.generation_id)
        for configured in catalog.streams
    }
    logger.info(f"Rejected records of this sync, if any, go to {storage.location} ({storage.path_format}).")
    return RejectedStore(storage, streams)


def _substitute(pattern: str, values: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match[1].lower()
        return str(uuid.uuid4()) if name == "uuid" else values[name]

    return PLACEHOLDER.sub(value, pattern)


def _key(*parts: str) -> str:
    """An object key of folders and a name: empty segments (no bucket_path, no namespace) left out."""
    *folders, name = parts
    return "/".join([segment for folder in folders for segment in folder.split("/") if segment] + [name])


def _segment(name: str) -> str:
    """A stream or namespace name as one folder: Airbyte's S3-safe characters (accents dropped, others `_`)."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    return S3_UNSAFE.sub("_", plain)


def _json(value: Any) -> bytes:
    return orjson.dumps(value, default=str)


def _cell(value: Any) -> Any:
    """A CSV cell: text and numbers as they are, everything else as JSON, nothing for null."""
    if value is None:
        return ""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return value
    return _json(value).decode()


def _compressed(storage: StorageConfig, body: bytes) -> bytes:
    return gzip.compress(body, mtime=0) if storage.gzip else body
