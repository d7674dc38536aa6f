"""The stand-in's answers, as plain values the HTTP handler writes out."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


OK = Reply(200, b"{}", "application/json")


def seconds_text(seconds: float) -> str:
    return f"{seconds:g}"


def bad_request(message: str) -> Reply:
    return Reply(400, message.encode())


def json_reply(value: Any) -> Reply:
    return Reply(200, orjson.dumps(value), "application/json")
