"""The stand-in's answers, as plain values the HTTP handler writes out."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


# How Heap acknowledges an ingestion request is not documented beyond "200 Event accepted". Heap's own
# server-side clients' tests mock it as an empty 200 text/plain body and as a 204: the default is the former.
ACKNOWLEDGEMENTS = {
    "empty": Reply(200, b""),
    "no-content": Reply(204, b""),
    "json": Reply(200, b"{}", "application/json"),
    "ok": Reply(200, b"OK"),
    "event-accepted": Reply(200, b"Event accepted"),
    # what one integration reports of a wrong app_id: a 200 whose JSON names an error, the data taken nowhere
    "json-error": Reply(200, b'{"error": "invalid app_id"}', "application/json"),
}


def seconds_text(seconds: float) -> str:
    return f"{seconds:g}"


def bad_request(message: str) -> Reply:
    return Reply(400, message.encode())


def json_reply(value: Any) -> Reply:
    return Reply(200, orjson.dumps(value), "application/json")
