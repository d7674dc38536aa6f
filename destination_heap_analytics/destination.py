"""The Airbyte protocol layer: spec, check and write, kept thin; the stages do the work.

`write` is the CDK's contract (AirbyteMessage objects in and out), for hosts that call it in-process. The
command line reads stdin itself and echoes each STATE from the JSON it came with: the platform matches an
echo to its state by fields (`id`) that the CDK's models drop.
"""

from __future__ import annotations

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
    ConnectorSpecification,
    ConnectorSpecificationSerializer,
    DestinationSyncMode,
    FailureType,
    Status,
    Type,
)
from airbyte_cdk.utils.airbyte_secrets_utils import filter_secrets, get_secrets, update_secrets
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

from destination_heap_analytics.config import ConfigError, HeapConfig, parse_config, specification, streams_for_catalog
from destination_heap_analytics.messages import Message, SourceState, from_airbyte_messages, parse_lines, read_lines

logger = logging.getLogger("airbyte")

CHECK_TIMEOUT_SECONDS = 10.0


class DestinationHeapAnalytics(Destination):
    def spec(self, logger: logging.Logger) -> ConnectorSpecification:
        """spec.yaml, as the CDK's Destination reads it, but parsed once (run_cmd asks for it twice)."""
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

    @staticmethod
    def read_config(config_path: str) -> dict[str, Any]:
        try:
            return Destination.read_config(config_path)
        except (OSError, ValueError) as error:
            raise AirbyteTracedException(
                message=f"Cannot read the config file: {error}", failure_type=FailureType.config_error
            ) from None

    def run_cmd(self, parsed_args: Any) -> Iterable[AirbyteMessage | dict[str, Any]]:
        """The CDK's commands, with the connector's own config rules first: their messages name the field and
        say what to write, where the spec's JSON-schema check (which the CDK runs next) can only say that a
        value is "not valid under any of the given schemas"."""
        if parsed_args.command == "write" and sys.stdin is None:
            raise AirbyteTracedException(
                message="stdin is closed: a write reads the source's messages from stdin; pipe them in.",
                failure_type=FailureType.config_error,
            )
        if parsed_args.command in ("check", "write"):
            try:
                config = self.read_config(config_path=parsed_args.config)
                update_secrets(get_secrets(self.spec(logger).connectionSpecification, config))
                parse_config(config)
            except (AirbyteTracedException, ConfigError) as error:
                message = error.message if isinstance(error, AirbyteTracedException) else str(error)
                if parsed_args.command == "write":
                    raise AirbyteTracedException(message=message, failure_type=FailureType.config_error) from None
                status = AirbyteConnectionStatus(status=Status.FAILED, message=message)
                yield AirbyteMessage(type=Type.CONNECTION_STATUS, connectionStatus=status)
                return
        yield from super().run_cmd(parsed_args)

    def _run_write(
        self, config: Mapping[str, Any], configured_catalog_path: str, input_stream: Any
    ) -> Iterator[dict[str, Any]]:
        """The command line's write: stdin's lines, each STATE echoed from its own JSON (see the module)."""
        catalog = _read_catalog(configured_catalog_path)
        yield from (state.message for state in self._sync(config, catalog, parse_lines(read_lines(sys.stdin.buffer))))

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
        input_messages: Iterable[AirbyteMessage],
    ) -> Iterable[AirbyteMessage]:
        """Load the records into Heap, yielding each STATE once Heap acknowledged every record before it."""
        for state in self._sync(config, configured_catalog, from_airbyte_messages(input_messages)):
            yield AirbyteMessageSerializer.load(state.message)

    def _sync(
        self, config: Mapping[str, Any], catalog: ConfiguredAirbyteCatalog, messages: Iterable[Message]
    ) -> Iterator[SourceState]:
        from destination_heap_analytics.preflight import check_columns  # only write needs the mapping
        from destination_heap_analytics.writer import SyncWriter  # and the delivery stack

        try:
            heap_config = parse_config(config)
            streams = streams_for_catalog(heap_config, _catalog_streams(catalog))
            for warning in check_columns(streams, _catalog_schemas(catalog)):
                logger.warning(warning)
        except ConfigError as error:
            raise AirbyteTracedException(message=str(error), failure_type=FailureType.config_error) from None
        writer = SyncWriter(heap_config, streams)
        # SIGTERM can be handled only from the main thread; a host calling write elsewhere handles it itself
        return writer.write(messages, handle_sigterm=threading.current_thread() is threading.main_thread())


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


def _catalog_streams(catalog: ConfiguredAirbyteCatalog) -> list[tuple[str, str | None]]:
    """The (name, namespace) of each stream the connection loads. Heap cannot delete, so a stream that asks for
    overwrite (a catalog written by hand or by older tooling) loads as append does."""
    for configured in catalog.streams:
        if configured.destination_sync_mode == DestinationSyncMode.overwrite:
            logger.warning(
                f"Stream {configured.stream.name}: sync mode overwrite, but Heap cannot delete data, so records "
                "are added as with append; nothing already in Heap is removed."
            )
    return [(configured.stream.name, configured.stream.namespace or None) for configured in catalog.streams]


def _catalog_schemas(catalog: ConfiguredAirbyteCatalog) -> dict[tuple[str, str | None], Any]:
    """Each stream's json_schema, as the source declared it, by (name, namespace)."""
    return {(c.stream.name, c.stream.namespace or None): c.stream.json_schema for c in catalog.streams}


def _deletion_credentials_problem(config: HeapConfig) -> str | None:
    """For delete_users, fetching an auth token proves app_id and api_key without deleting anything."""
    from destination_heap_analytics.client import DeletionAuth, DeliveryError, TokenUnavailable

    timeout = (CHECK_TIMEOUT_SECONDS, CHECK_TIMEOUT_SECONDS)
    for stream in config.streams:
        if stream.api_key is None:
            continue
        try:
            DeletionAuth(config, stream.api_key, requests.Session(), timeout).headers()
        except DeliveryError as error:
            return str(error)
        except (TokenUnavailable, requests.RequestException) as error:
            return f"Heap's auth token endpoint failed ({type(error).__name__}); try again later."
    return None


def _unreachable(base_url: str) -> str | None:
    """None if Heap's host gives any HTTP answer to a GET (which writes nothing); else what to fix."""
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
