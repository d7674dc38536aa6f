"""A mapping that names a column the stream does not have: caught before it costs data.

Before anything is sent, `check_columns` holds each stream's mapping against the stream's json_schema in the
configured catalog (the platform always sends the source's schema). Once records flow, a `ColumnWatch` per
stream sees whether every record so far was skipped because the same required column, one the schema does not
declare, is absent from it: the sync then stops before the stream's first STATE leaves, so a config mistake
never moves the source's cursor. A declared column a record lacks is data (a source leaves out a null, a CDC
update carries only what changed). Where the schema declares nothing, a property column no record had by the
stream's first STATE is named in a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from difflib import get_close_matches
from typing import Any

from jsonpath_ng import Child, Fields, Root
from jsonpath_ng import parse as parse_jsonpath

from destination_heap_analytics.config import (
    PRESETS,
    REQUIRED_COLUMNS,
    ConfigError,
    StreamConfig,
    StreamKey,
    stream_label,
)
from destination_heap_analytics.mapping import HeapItem, Rejection, literal_name

# The difflib ratio (case ignored) from which an undeclared column is taken for a typo of a declared one:
# emial for email scores 0.8, plna for plan 0.75; updated_at for created_at (0.7) is a column of its own.
NEAR_MISS = 0.75
CLOSEST_SHOWN = 3
# The columns a mapping names, besides each of its property columns
COLUMN_FIELDS = (
    "identity_column",
    "event_column",
    "timestamp_column",
    "account_id_column",
    "user_id_column",
    "event_id_column",
)
# At a stream's first STATE, or at its this-many-th record if that comes first, the watch gives its verdict.
RECORDS_WATCHED = 1000

logger = logging.getLogger("airbyte")


def check_columns(streams: Mapping[StreamKey, StreamConfig], schemas: Mapping[StreamKey, Any]) -> list[str]:
    """Every column each stream's mapping names, against the `properties` its schema declares. An undeclared
    column that is a near miss of a declared one, or that a closed schema (additionalProperties false) rules
    out, is refused: one ConfigError names each. The warnings for the other undeclared columns are returned
    (some sources send fields their schema does not declare). A schema that declares nothing is not checked."""
    refused: list[str] = []
    warnings: list[str] = []
    for key, stream in streams.items():
        schema = schemas.get(key)
        declared = declared_columns(schema)
        if declared is None:
            continue  # nothing declared: nothing to hold the mapping against
        closed = schema.get("additionalProperties") is False
        for field, column in named_columns(stream):
            if _declares(declared, column):
                continue
            # excluding a column the stream lacks costs nothing, but a typo there sends what was meant to stay out
            refusal = _refusal(column, declared, closed and field != "excluded_columns")
            if refusal:
                refused.append(f"stream {stream_label(key)}: {field} {column!r} {refusal}")
            else:
                warnings.append(
                    f"Stream {stream_label(key)}: {field} {column!r} is not declared in the stream's schema; the sync "
                    "goes on, as some sources send fields they do not declare. If the records do not have it, fix "
                    "the column name."
                )
    if refused:
        raise ConfigError(
            f"The mapping names columns the source does not have: {'; '.join(refused)}. Nothing was sent. Fix "
            "the column names in the config (they are case-sensitive), or refresh the source's schema if the "
            "source has these columns."
        )
    return warnings


def declared_columns(schema: Any) -> Mapping[str, Any] | None:
    """The top-level properties a stream's json_schema declares; None where it declares none (schemaless)."""
    declared = schema.get("properties") if isinstance(schema, Mapping) else None
    return declared if isinstance(declared, Mapping) and declared else None


def named_columns(stream: StreamConfig) -> Iterator[tuple[str, str]]:
    """(config field, column) for every record column the mapping names. A preset's optional columns are left
    out: its mapping is made to work without them (Heap Connect's per-event tables have no `type`)."""
    mapping = stream.mapping
    preset = PRESETS.get(stream.preset or "", {})
    for field in COLUMN_FIELDS:
        column = getattr(mapping, field)
        if column is not None and not (preset.get(field) == column and field not in REQUIRED_COLUMNS[mapping.api_type]):
            yield field, column
    for column in mapping.property_columns or ():  # None: "*", which names no column
        yield "property_columns", column
    excluded_by_preset = set(preset.get("excluded_columns", "").split(","))
    for column in sorted(mapping.excluded_columns - excluded_by_preset):
        yield "excluded_columns", column


def first_field(column: str) -> str | None:
    """The record's top-level field a column starts from: address for address.city, items for items[0].sku,
    email for $.email, $city for `$city` (in backquotes: the field itself); None where a JSONPath starts
    anywhere else ($..email, $[*])."""
    literal = literal_name(column)
    if literal is not None:
        return literal
    if not (column.startswith("$") or "[" in column):
        return column.split(".", 1)[0]
    try:
        path = parse_jsonpath(column)
    except Exception:  # jsonpath-ng raises several kinds; Mapping refuses the column with its own message
        return None
    while isinstance(path, Child):
        path = path.right if isinstance(path.left, Root) else path.left
    if isinstance(path, Fields) and len(path.fields) == 1 and path.fields[0] != "*":
        return path.fields[0]
    return None


def _declares(declared: Mapping[str, Any], column: str) -> bool:
    """The schema declares the column (a path: its first field), or the column cannot be checked. PyAirbyte,
    loading from its cache, sends the source's schema with records whose top-level keys it lowercased
    (spaces and hyphens to _): a declared column in that form is declared too."""
    first = first_field(column)
    if first is None or column in declared or first in declared:
        return True
    return first in {str(name).lower().replace(" ", "_").replace("-", "_") for name in declared}


def _refusal(column: str, declared: Mapping[str, Any], closed: bool) -> str | None:
    """Why an undeclared column stops the sync: a near miss of a declared column, or a closed schema."""
    near = _closest(first_field(column) or column, declared, NEAR_MISS)
    if near:
        return f"is not declared by the stream, whose closest columns are {', '.join(near)}"
    if closed:
        shown = ", ".join(_closest(first_field(column) or column, declared, 0.0))
        return f"is not a column of the stream (its schema allows no other fields; its closest columns are {shown})"
    return None


def _closest(column: str, declared: Mapping[str, Any], cutoff: float) -> list[str]:
    """The declared columns closest to `column`, case ignored, that score at least `cutoff`."""
    by_lower = {str(name).lower(): str(name) for name in declared}
    return [by_lower[name] for name in get_close_matches(column.lower(), by_lower, CLOSEST_SHOWN, cutoff)]


class ColumnWatch:
    """One stream's first records, watched for a column of the mapping that the records do not have.

    A required column the schema does not declare is suspect while every record of the stream so far was skipped
    for the same reason and column (missing_identity for identity_column emial, say) and that column is absent
    from each record (not merely empty: an anonymous row with identity null is data, not a mistake). The
    verdict comes at the stream's first STATE, or at its RECORDS_WATCHED-th record if that comes first: a suspect
    column then stops the sync before the STATE leaves. A column the schema declares is never suspect: a record
    without it is data, skipped and counted. After the verdict, or after any other record, that watch ends.

    Where the schema declares nothing (`schema` None or without properties), the property columns are watched
    too: at the stream's first STATE after a record, each one no record so far had is named in a warning (a
    misspelled optional column would otherwise never reach Heap without a word). Column names come from the
    config: safe to log."""

    def __init__(self, stream: StreamConfig, key: StreamKey, schema: Any = None) -> None:
        self._name = stream_label(key)
        self._property_columns = stream.mapping.property_columns or ()
        self._declared = declared_columns(schema)
        self._records = 0
        self._suspect: Rejection | None = None
        self._suspecting = True
        # the property columns no record has had yet, where no schema says which the stream has
        self._unseen = list(self._property_columns) if self._declared is None else []
        self.watching = True

    def saw(self, record: Any, result: HeapItem | Rejection) -> str | None:
        """One record of the stream and what the mapping made of it; the refusal once the watch's last record
        proves a required column absent."""
        if not self.watching:
            return None
        self._records += 1
        if self._unseen and isinstance(record, dict):
            self._unseen = [column for column in self._unseen if _absent(record, column)]
        refusal = self._suspected(record, result) if self._suspecting else None
        self.watching = self._suspecting or bool(self._unseen)
        return refusal

    def at_state(self) -> str | None:
        """A STATE of the stream arrived: the refusal, if every record so far lacked the same undeclared
        required column; a warning naming each property column no record had, where the schema declares none."""
        if not self.watching or not self._records:
            return None  # a STATE before any record of the stream proves nothing: the next one decides
        self.watching = False
        if self._unseen:
            logger.warning(
                f"Stream {self._name}: none of its first {self._records} records has the property column(s) "
                f"{', '.join(self._unseen)}, so no property of that name reached Heap. The stream's schema "
                "declares no fields to check them against: if the records should have them, fix the column names "
                "in property_columns (they are case-sensitive)."
            )
            self._unseen = []
        return self._verdict() if self._suspecting else None

    def _suspected(self, record: Any, result: HeapItem | Rejection) -> str | None:
        """The required-column watch over one more record: it ends at a record that is not skipped for the
        same absent, undeclared column; at the RECORDS_WATCHED-th, the verdict."""
        if result.__class__ is not Rejection or not self._lacks_column(record, result) or self._suspect not in (
            None,
            result,
        ):
            self._suspecting, self._suspect = False, None
            return None
        self._suspect = result
        return self._verdict() if self._records >= RECORDS_WATCHED else None

    def _verdict(self) -> str | None:
        self._suspecting = False
        if self._suspect is None:
            return None
        if self._suspect.reason == "no_properties":
            columns = ",".join(self._property_columns)
            lacking = f"no_properties (property_columns {columns}): none of them has any of these columns"
        else:
            lacking = f"{self._suspect.describe()}: none of them has that column"
        return (
            f"Stream {self._name}: every one of its first {self._records} records was skipped as {lacking}. The "
            "sync stopped before the stream's state, so the source's cursor has not moved past them. Fix the "
            "column name in the mapping (names are case-sensitive) to one the source's records have."
        )

    def _lacks_column(self, record: Any, rejection: Rejection) -> bool:
        """The rejection is for a required column that is absent from the record and that the schema does not
        declare (a declared column a record lacks is data: a source leaving out a null, a partial update)."""
        if not isinstance(record, dict):
            return False
        if rejection.reason == "no_properties":
            return bool(self._property_columns) and all(
                _absent(record, column) and not self._declares(column) for column in self._property_columns
            )
        column = rejection.column
        return (
            rejection.reason.startswith("missing_")
            and column is not None
            and _absent(record, column)
            and not self._declares(column)
        )

    def _declares(self, column: str) -> bool:
        return self._declared is not None and _declares(self._declared, column)


def _absent(record: dict[str, Any], column: str) -> bool:
    first = first_field(column)
    return first is not None and column not in record and first not in record
