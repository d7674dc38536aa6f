"""The Airbyte protocol layer: spec, check and write, kept thin; the stages do the work."""

from __future__ import annotations

import ctypes
import gc
import io
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson
from airbyte_cdk.destinations import Destination
from airbyte_cdk.exception_handler import init_uncaught_exception_handler
from airbyte_cdk.models import (
    AirbyteConnectionStatus,
    AirbyteMessage,
    AirbyteMessageSerializer,
    ConfiguredAirbyteCatalog,
    DestinationSyncMode,
    FailureType,
    Status,
    Type,
)
from airbyte_cdk.utils.airbyte_secrets_utils import filter_secrets, get_secrets, update_secrets
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

from destination_heap_analytics.config import ConfigError, HeapConfig, for_stream, parse_config
from destination_heap_analytics.messages import read_blocks

logger = logging.getLogger("airbyte")

CHECK_TIMEOUT_SECONDS = 10.0
YOUNG_GENERATION_THRESHOLD = 20_000
# glibc's mallopt parameters, and the values a write runs with
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEPT_FREE_BYTES = 256 << 20
HEAP_BLOCK_LIMIT_BYTES = 32 << 20


class DestinationHeapAnalytics(Destination):
    # The CDK's JSON-schema check reports a wrong oneOf as "not valid under any of the given schemas";
    # parse_config says which field is wrong and what to write instead.
    check_config_against_spec = False

    def run(self, args: list[str]) -> None:
        """As the CDK's run, with two differences. Each message leaves at once (a STATE held in a pipe buffer
        is a STATE the platform does not have) and whole, in one write: print's two writes (the text, then the
        newline) let a log line from a sender thread fall between them, gluing two messages into one line. And
        a failure raised on purpose (bad config, Heap unreachable, SIGTERM) ends with its TRACE message alone,
        which says what to do, and an immediate exit: a request still hanging in a sender thread must not hold
        the process open."""
        sys.stdout.reconfigure(line_buffering=True)
        init_uncaught_exception_handler(logger)
        try:
            for message in self.run_cmd(self.parse_args(args)):
                emit(orjson.dumps(AirbyteMessageSerializer.dump(message)).decode())
        except AirbyteTracedException as failure:
            logger.error(failure.message)
            trace = failure.as_airbyte_message()
            trace.trace.error.stack_trace = None
            emit(filter_secrets(orjson.dumps(AirbyteMessageSerializer.dump(trace)).decode()))
            logging.shutdown()  # flushes the CDK's buffered log handler
            os._exit(1)

    @staticmethod
    def read_config(config_path: str) -> dict[str, Any]:
        try:
            return Destination.read_config(config_path)
        except (OSError, ValueError) as error:
            raise AirbyteTracedException(
                message=f"Cannot read the config file: {error}", failure_type=FailureType.config_error
            ) from None

    def run_cmd(self, parsed_args: Any) -> Iterable[AirbyteMessage]:
        if parsed_args.command != "check":
            yield from super().run_cmd(parsed_args)
            return
        try:
            config = self.read_config(config_path=parsed_args.config)
        except AirbyteTracedException as error:
            status = AirbyteConnectionStatus(status=Status.FAILED, message=error.message)
        else:
            update_secrets(get_secrets(self.spec(logger).connectionSpecification, config))
            status = self.check(logger, config)
        yield AirbyteMessage(type=Type.CONNECTION_STATUS, connectionStatus=status)

    def check(self, logger: logging.Logger, config: Mapping[str, Any]) -> AirbyteConnectionStatus:
        """Validate the config and prove Heap's host answers, without writing anything into the project."""
        try:
            heap_config = parse_config(config)
        except ConfigError as error:
            return AirbyteConnectionStatus(status=Status.FAILED, message=str(error))
        problem = _unreachable(heap_config.base_url) or _deletion_credentials_problem(heap_config)
        if problem:
            return AirbyteConnectionStatus(status=Status.FAILED, message=problem)
        logger.info(f"Heap answered at {heap_config.base_url}; the config is valid (nothing was sent to Heap).")
        return AirbyteConnectionStatus(status=Status.SUCCEEDED)

    def write(
        self,
        config: Mapping[str, Any],
        configured_catalog: ConfiguredAirbyteCatalog,
        input_messages: Iterator[bytes | None],
    ) -> Iterable[AirbyteMessage]:
        from destination_heap_analytics.writer import SyncWriter  # only write needs the delivery stack

        heap_config = _config_or_trace(config)
        stream, namespace = _single_stream(configured_catalog)
        # What was loaded so far lives for the whole sync. Frozen, the garbage collector stops re-scanning
        # those ~100k objects while millions of short-lived records pass: measured 20% less CPU a record.
        # Records hold no reference cycles, so the young generation is collected every 20,000 allocations
        # instead of 700: 3% less CPU (measured), and at most a few MB more memory.
        gc.freeze()
        gc.set_threshold(YOUNG_GENERATION_THRESHOLD)
        _reuse_freed_memory()
        yield from SyncWriter(for_stream(heap_config, stream), stream, namespace).write(input_messages)

    def _parse_input_stream(self, input_stream: io.TextIOWrapper) -> Iterator[bytes | None]:
        """Stdin in blocks of lines, a read at a time, for this class's write alone: the intake parses and
        maps them, in worker processes when the machine has the cores (see intake.py)."""
        return read_blocks(input_stream)


def emit(line: str) -> None:
    """One message on stdout: a single write of the line and its newline, as the log handler writes its lines."""
    sys.stdout.write(line + "\n")


def _reuse_freed_memory() -> None:
    """By default glibc gives freed memory back to the kernel once 128 kB lie free at the top of the heap,
    and serves every block over 128 kB (a stdin read, a request body) with a fresh mmap: either way the
    next megabyte of records page-faults again. On this VM that was most of the cost of keeping an item's
    JSON (1.07 against 0.13 µs, measured). A sync's memory is bounded, so freed memory is kept for reuse."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_TRIM_THRESHOLD, KEPT_FREE_BYTES)
        libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_LIMIT_BYTES)
    except (OSError, AttributeError):  # not glibc: its allocator's own defaults stand
        pass


def _config_or_trace(config: Mapping[str, Any]) -> HeapConfig:
    try:
        return parse_config(config)
    except ConfigError as error:
        raise AirbyteTracedException(message=str(error), failure_type=FailureType.config_error) from None


def _single_stream(catalog: ConfiguredAirbyteCatalog) -> tuple[str, str | None]:
    """Each sync loads one stream into Heap; several would need several mappings."""
    streams = catalog.streams
    if len(streams) != 1:
        names = ", ".join(sorted(s.stream.name for s in streams)) or "none"
        raise AirbyteTracedException(
            message=f"This destination loads exactly one stream per connection; the catalog has "
            f"{len(streams)} ({names}). Select one stream, and create one connection per stream.",
            failure_type=FailureType.config_error,
        )
    configured = streams[0]
    if configured.destination_sync_mode == DestinationSyncMode.overwrite:
        logger.warning(
            "Sync mode overwrite: Heap cannot delete data, so records are added as with append; "
            "nothing already in Heap is removed."
        )
    return configured.stream.name, configured.stream.namespace


def _deletion_credentials_problem(config: HeapConfig) -> str | None:
    """For delete_users, fetching an auth token proves app_id and api_key without deleting anything."""
    if config.mapping.api_type != "delete_users":
        return None
    import requests

    from destination_heap_analytics.delivery import DeletionAuth, DeliveryError, TokenUnavailable

    timeout = (CHECK_TIMEOUT_SECONDS, CHECK_TIMEOUT_SECONDS)
    try:
        DeletionAuth(config, requests.Session(), timeout).headers()
    except DeliveryError as error:
        return str(error)
    except (TokenUnavailable, requests.RequestException) as error:
        return f"Heap's auth token endpoint failed ({type(error).__name__}: {error}); try again later."
    return None


def _unreachable(base_url: str) -> str | None:
    """None if Heap's host gives any HTTP answer to a GET (which writes nothing); else what to fix."""
    import requests

    try:
        requests.get(base_url + "/", timeout=CHECK_TIMEOUT_SECONDS, allow_redirects=False)
    except requests.exceptions.SSLError:
        return f"TLS handshake with {base_url} failed: check base_url and any proxy that intercepts HTTPS."
    except requests.Timeout:
        return f"{base_url} did not answer within {CHECK_TIMEOUT_SECONDS:.0f} s: check base_url and the network."
    except requests.ConnectionError:
        return (
            f"Cannot connect to {base_url} (DNS or connection failure): check base_url "
            "(US: https://heapanalytics.com, EU: https://c.eu.heap-api.com) and that this host can reach it."
        )
    return None
