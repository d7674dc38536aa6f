"""The Airbyte protocol layer: spec, check, discover and write, kept thin; the stages do the work.

The command line's commands are answered here (`run_cmd`), the config read and parsed once: discover, which
the CDK's Destination does not know (data activation, activation.py), and write, which reads stdin itself and
echoes each STATE from the JSON it came with: the platform matches an echo to its state by fields (`id`) that
the CDK's models drop. `check` and `write` are also the CDK's contract, for hosts that call them in-process
(AirbyteMessage objects in and out).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson
import requests
from airbyte_cdk.destinations import Destination
from airbyte_cdk.exception_handler import init_uncaught_exception_handler
from airbyte_cdk.models import (
    AirbyteConnectionStatus,
    AirbyteMessage,
    AirbyteMessageSerializer,
    ConfiguredAirbyteCatalog,
    ConfiguredAirbyteCatalogSerializer,
    ConfiguredAirbyteStream,
    ConnectorSpecification,
    ConnectorSpecificationSerializer,
    DestinationSyncMode,
    FailureType,
    Status,
    Type,
)
from airbyte_cdk.sources.utils.schema_helpers import check_config_against_spec_or_exit
from airbyte_cdk.utils.airbyte_secrets_utils import filter_secrets, get_secrets, update_secrets
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

from destination_heap_analytics.activation import (
    declared_fields,
    destination_catalog,
    mapped_in_ui,
    undeclared_fields_told,
)
from destination_heap_analytics.config import (
    ConfigError,
    HeapConfig,
    StreamKey,
    parse_config,
    specification,
    stream_label,
    streams_for_catalog,
)
from destination_heap_analytics.messages import Message, SourceState, from_airbyte_messages, parse_lines, read_lines
from destination_heap_analytics.rejected import StorageConfig, check_store, open_store, parse_storage_config

logger = logging.getLogger("airbyte")

CHECK_TIMEOUT_SECONDS = 10.0
COMMANDS = {  # beside spec, which needs no config
    "check": "check the config and that Heap's host answers, without writing anything",
    "discover": "list the Heap objects a stream can be mapped to (data activation)",
    "write": "load the records on stdin into Heap",
}


class DestinationHeapAnalytics(Destination):
    def spec(self, logger: logging.Logger) -> ConnectorSpecification:
        """spec.yaml, as the CDK's Destination reads it, but parsed once."""
        return ConnectorSpecificationSerializer.load(specification())

    def run(self, args: list[str]) -> None:
        """As the CDK's run, with three differences. Each message leaves at once (a STATE held in a pipe buffer
        is a STATE the platform does not have) and whole, in one write: print's two writes let a log line from
        a sender thread fall between a message and its newline. A failure raised on purpose (bad config, Heap
        unreachable, SIGTERM) ends with its TRACE message alone and an immediate exit: a request still
        hanging in a sender thread must not hold the process open. A closed stdout ends the sync quietly."""
        sys.stdout.reconfigure(line_buffering=True)
        init_uncaught_exception_handler(logger)
        logging.raiseExceptions = False  # a log line that cannot be written (stdout closed) is no traceback
        try:
            for message in self.run_cmd(self.parse_args(args)):
                emit(message if isinstance(message, dict) else AirbyteMessageSerializer.dump(message))
            sys.stdout.flush()
        except AirbyteTracedException as failure:
            logger.error(failure.message)
            trace = AirbyteMessageSerializer.dump(failure.as_airbyte_message())
            trace["trace"]["error"].pop("stack_trace", None)
            emit(trace, secrets_filtered=True)
            logging.shutdown()  # flushes the CDK's buffered log handler
            os._exit(1)
        except BrokenPipeError:  # whoever read our output is gone: nothing more can be said
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor flushed at exit
            os._exit(1)

    def parse_args(self, args: list[str]) -> argparse.Namespace:
        """The commands a destination answers: the CDK's spec, check and write, and data activation's discover
        (which the CDK's parser does not know)."""
        parser = argparse.ArgumentParser(prog="destination-heap-analytics")
        commands = parser.add_subparsers(title="commands", dest="command", required=True)
        commands.add_parser("spec", help="print the connector's specification")
        for name, purpose in COMMANDS.items():
            command = commands.add_parser(name, help=purpose)
            command.add_argument("--config", required=True, help="path to the JSON config file")
            if name == "write":
                command.add_argument("--catalog", required=True, help="path to the configured catalog JSON file")
        return parser.parse_args(args)

    def run_cmd(self, parsed_args: argparse.Namespace) -> Iterator[AirbyteMessage | dict[str, Any]]:
        """Each command, the config read and parsed once. The connector's own config rules come first: their
        messages name the field and say what to write, where the spec's JSON-schema check can only say that a
        value is "not valid under any of the given schemas". A config refused fails check with its message,
        and any other command with a config_error TRACE."""
        command = parsed_args.command
        if command == "spec":
            yield AirbyteMessage(type=Type.SPEC, spec=self.spec(logger))
            return
        if command == "write" and sys.stdin is None:
            raise AirbyteTracedException(
                message="stdin is closed: a write reads the source's messages from stdin; pipe them in.",
                failure_type=FailureType.config_error,
            )
        try:
            config, storage = self._parse_config(self.read_config(config_path=parsed_args.config))
        except AirbyteTracedException as refused:
            if command != "check":
                raise
            yield _status(Status.FAILED, refused.message)
            return
        if command == "check":
            yield _status(*self._check(config, storage))
        elif command == "discover":
            yield destination_catalog(config)
        else:
            catalog = _read_catalog(parsed_args.catalog)
            # each STATE echoed from its own JSON (see the module)
            messages = parse_lines(read_lines(sys.stdin.buffer))
            yield from (state.message for state in self._sync(config, storage, catalog, messages))

    @staticmethod
    def read_config(config_path: str) -> dict[str, Any]:
        try:
            return Destination.read_config(config_path)
        except (OSError, ValueError) as error:
            raise AirbyteTracedException(
                message=f"Cannot read the config file: {error}", failure_type=FailureType.config_error
            ) from None

    def check(self, logger: logging.Logger, config: Mapping[str, Any]) -> AirbyteConnectionStatus:
        """Validate the config and prove Heap's host answers, without writing anything into the project (and the
        bucket for rejected records, if one is configured, writable)."""
        update_secrets(get_secrets(self.spec(logger).connectionSpecification, config))
        try:
            heap_config, storage = _parsed(config), parse_storage_config(config)
        except ConfigError as error:
            return _status(Status.FAILED, str(error)).connectionStatus
        return _status(*self._check(heap_config, storage)).connectionStatus

    def write(
        self,
        config: Mapping[str, Any],
        configured_catalog: ConfiguredAirbyteCatalog,
        input_messages: Iterable[AirbyteMessage],
    ) -> Iterable[AirbyteMessage]:
        """Load the records into Heap, yielding each STATE once Heap acknowledged every record before it."""
        heap_config, storage = _heap_config(config)
        for state in self._sync(heap_config, storage, configured_catalog, from_airbyte_messages(input_messages)):
            yield AirbyteMessageSerializer.load(state.message)

    def _parse_config(self, raw: Mapping[str, Any]) -> tuple[HeapConfig, StorageConfig | None]:
        """The command line's config: its secrets registered with the log filter before anything can print them,
        the connector's rules, then the spec (what the platform and PyAirbyte check a config against)."""
        spec = self.spec(logger)
        update_secrets(get_secrets(spec.connectionSpecification, raw))
        parsed = _heap_config(raw)
        check_config_against_spec_or_exit(raw, spec)
        return parsed

    @staticmethod
    def _check(config: HeapConfig, storage: StorageConfig | None) -> tuple[Status, str | None]:
        problem = _unreachable(config.base_url) or _deletion_credentials_problem(config) or check_store(storage)
        if problem:
            return Status.FAILED, problem
        logger.info(f"Heap answered at {config.base_url}; the config is valid (nothing was sent to Heap).")
        return Status.SUCCEEDED, None

    @staticmethod
    def _sync(
        config: HeapConfig,
        storage: StorageConfig | None,
        catalog: ConfiguredAirbyteCatalog,
        messages: Iterable[Message],
    ) -> Iterator[SourceState]:
        """The write itself. A stream that names a Heap object (mapped in Airbyte's UI) loads into it; the others
        by the config's mapping: a `streams` entry, else the top-level api."""
        from destination_heap_analytics.preflight import check_columns  # only write needs the mapping
        from destination_heap_analytics.writer import SyncWriter  # and the delivery stack

        in_ui = [configured for configured in catalog.streams if configured.destination_object_name]
        by_config = [configured for configured in catalog.streams if not configured.destination_object_name]
        _say_heap_keeps_what_it_holds(catalog.streams)
        try:
            mapped = streams_for_catalog(config, _catalog_streams(by_config))
            # a mapping made in the UI was checked against the stream's fields by the platform, when it was saved
            for warning in check_columns(mapped, _catalog_schemas(by_config)):
                logger.warning(warning)
            streams = mapped_in_ui(config, in_ui) | mapped
        except ConfigError as error:
            raise AirbyteTracedException(message=str(error), failure_type=FailureType.config_error) from None
        # a dry run stores nothing: its records are neither sent nor rejected for good
        store = None if config.dry_run else open_store(storage, catalog)
        writer = SyncWriter(config, streams, _catalog_schemas(catalog.streams), store)
        declared = {_key(c): frozenset(fields) for c in in_ui if (fields := declared_fields(c)) is not None}
        if declared:  # an activation stream sends only its declared fields: the others are said in the log
            messages = undeclared_fields_told(messages, declared)
        # SIGTERM can be handled only from the main thread; a host calling write elsewhere handles it itself
        return writer.write(messages, handle_sigterm=threading.current_thread() is threading.main_thread())


def _heap_config(raw: Mapping[str, Any]) -> tuple[HeapConfig, StorageConfig | None]:
    """The config parsed by the connector's rules, and its storage for rejected records; a refusal is a
    config_error naming the field."""
    try:
        return _parsed(raw), parse_storage_config(raw)
    except ConfigError as error:
        raise AirbyteTracedException(message=str(error), failure_type=FailureType.config_error) from None


def _parsed(raw: Mapping[str, Any]) -> HeapConfig:
    """The config parsed, and every column of its mappings compiled as a sync will (a column that is no valid
    path is refused here, by check too, not at the first record)."""
    from destination_heap_analytics.mapping import Mapping as RecordMapping  # the mapping's own path rules

    config = parse_config(raw)
    for stream in config.streams:
        try:
            RecordMapping(stream.mapping)
        except ConfigError as error:
            where = f"streams entry {stream.stream}" if stream.stream is not None else "api"
            raise ConfigError(f"{where}: {error}") from None
    return config


def _status(status: Status, message: str | None) -> AirbyteMessage:
    """check's answer, its message masked as every log line and TRACE is: a refusal may quote the value it
    refuses, and that value may be a secret pasted into the wrong field."""
    masked = filter_secrets(message) if message else message
    return AirbyteMessage(
        type=Type.CONNECTION_STATUS, connectionStatus=AirbyteConnectionStatus(status=status, message=masked)
    )


def emit(message: dict[str, Any], secrets_filtered: bool = False) -> None:
    """One message on stdout: a single write of the line and its newline, as the log handler writes its lines."""
    line = orjson.dumps(message).decode()
    sys.stdout.write((filter_secrets(line) if secrets_filtered else line) + "\n")


def _read_catalog(path: str) -> ConfiguredAirbyteCatalog:
    try:
        with open(path, "rb") as catalog:
            return ConfiguredAirbyteCatalogSerializer.load(orjson.loads(catalog.read()))
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise AirbyteTracedException(
            message=f"Cannot read the configured catalog: {type(error).__name__}. Pass the catalog Airbyte wrote.",
            failure_type=FailureType.config_error,
        ) from None


def _key(configured: ConfiguredAirbyteStream) -> StreamKey:
    return configured.stream.name, configured.stream.namespace or None


def _catalog_streams(streams: list[ConfiguredAirbyteStream]) -> list[StreamKey]:
    """The (name, namespace) of each stream mapped by the config."""
    return [_key(configured) for configured in streams]


def _catalog_schemas(streams: list[ConfiguredAirbyteStream]) -> dict[StreamKey, Any]:
    """Each stream's json_schema, as the source declared it, by (name, namespace)."""
    return {_key(configured): configured.stream.json_schema for configured in streams}


def _say_heap_keeps_what_it_holds(streams: list[ConfiguredAirbyteStream]) -> None:
    """Heap's ingestion APIs cannot delete. A stream whose sync asks to remove what earlier syncs loaded loads as
    if it did not: overwrite (Airbyte's Clear, a full refresh that replaces, a catalog of older tooling) as
    append, or as its object's operation; a refresh that drops earlier generations (minimum_generation_id up to
    generation_id, as the platform sends it with supportsRefreshes) as it is. The log says so, and how to delete
    users, which Heap can do."""
    for configured in streams:
        overwrite = configured.destination_sync_mode == DestinationSyncMode.overwrite
        minimum = configured.minimum_generation_id
        if not (overwrite or minimum and minimum == configured.generation_id):
            continue
        asked = "sync mode overwrite" if overwrite else "a refresh that drops earlier loads (minimum_generation_id)"
        loads = "with append" if overwrite and not configured.destination_object_name else "as usual"
        if configured.destination_object_name:
            how = ("map a stream of their identities or Heap user IDs onto the object user with the sync mode Soft "
                   "delete in Airbyte's Mappings tab (it needs api_key, Heap's deletion key)")
        else:
            how = "load a stream of their identities or Heap user IDs with api_type delete_users"
        logger.warning(
            f"Stream {stream_label(_key(configured))}: {asked} asks to clear the data earlier syncs loaded, but "
            "Heap's ingestion APIs cannot delete: Heap's data is not cleared, nothing already in Heap is removed, "
            f"and the stream's records, if any, are added {loads}. To delete users and their data from Heap, {how}."
        )


def _deletion_credentials_problem(config: HeapConfig) -> str | None:
    """For delete_users, fetching an auth token proves app_id and api_key without deleting anything."""
    from destination_heap_analytics.client import DeletionAuth, DeliveryError, TokenUnavailable
    from destination_heap_analytics.exchange import heap_session

    timeout = (CHECK_TIMEOUT_SECONDS, CHECK_TIMEOUT_SECONDS)
    keys = [stream.api_key for stream in config.streams if stream.api_key is not None]
    for api_key in dict.fromkeys([*keys, *([config.api_key] if config.api_key else [])]):
        try:
            DeletionAuth(config, api_key, heap_session(), timeout).headers()
        except DeliveryError as error:
            return str(error)
        except requests.Timeout:
            return f"Heap's auth token endpoint did not answer within {CHECK_TIMEOUT_SECONDS:.0f} s; try again later."
        except (TokenUnavailable, requests.RequestException) as error:
            return f"Heap's auth token endpoint failed ({type(error).__name__}); try again later."
    return None


def _unreachable(base_url: str) -> str | None:
    """None if Heap's host gives a whole HTTP answer to a GET (which writes nothing) within the deadline; else
    what to fix."""
    from destination_heap_analytics.exchange import exchange, heap_session

    try:
        exchange(heap_session(), base_url + "/", (CHECK_TIMEOUT_SECONDS, CHECK_TIMEOUT_SECONDS), method="GET")
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
