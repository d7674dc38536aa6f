"""Heap's user deletion API: Basic-auth tokens that expire, deletion requests of up to 10,000 users."""

from __future__ import annotations

import base64
import threading
import time
import uuid

import orjson

from heap_standin.replies import Reply, bad_request, json_reply
from heap_standin.rules import deletion_body_error

DELETION_PREFIX = "/api/public/v0/"


class Deletions:
    """Heap's user deletion API: Basic-auth tokens that expire, deletion requests of up to 10,000 users."""

    def __init__(self, api_key: str | None, token_ttl_seconds: float) -> None:
        self.api_key = api_key  # None: any non-empty key is accepted
        self.token_ttl = token_ttl_seconds
        self.lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self.lock:
            self.tokens: dict[str, float] = {}  # token -> expiry (monotonic)
            self.requests: dict[str, list[dict]] = {}  # deletion_request_id -> users
            self.tokens_issued = 0

    @property
    def deleted_users(self) -> list[dict]:
        with self.lock:
            return [user for users in self.requests.values() for user in users]

    def serve(self, method: str, path: str, authorization: str, raw: bytes) -> Reply:
        if path == DELETION_PREFIX + "auth_token" and method == "POST":
            return self._token(authorization)
        if path == DELETION_PREFIX + "user_deletion" and method == "POST":
            return self._delete(authorization, raw)
        if path.startswith(DELETION_PREFIX + "deletion_status/") and method == "GET":
            request_id = path.rsplit("/", 1)[1]
            with self.lock:
                known = request_id in self.requests
            return json_reply({"status": "complete"}) if known else Reply(404, b"Not Found")
        return Reply(404, b"Not Found")

    def _token(self, authorization: str) -> Reply:
        try:
            scheme, encoded = authorization.split(" ", 1)
            app_id, api_key = base64.b64decode(encoded).decode().split(":", 1)
        except (ValueError, UnicodeDecodeError):
            return Reply(401, b"Unauthorized: HTTP Basic auth with app_id:api_key is required")
        if scheme != "Basic" or not app_id.isdigit() or not api_key or (self.api_key not in (None, api_key)):
            return Reply(401, b"Unauthorized")
        token = uuid.uuid4().hex
        with self.lock:
            self.tokens[token] = time.monotonic() + self.token_ttl
            self.tokens_issued += 1
        return json_reply({"access_token": token})

    def _delete(self, authorization: str, raw: bytes) -> Reply:
        token = authorization.removeprefix("Bearer ")
        with self.lock:
            expiry = self.tokens.get(token)
        if not authorization.startswith("Bearer ") or expiry is None or expiry < time.monotonic():
            return Reply(401, b"Unauthorized: missing or expired token")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return bad_request("postBody should be valid JSON")
        if error := deletion_body_error(body):
            return bad_request("postBody" + error)
        request_id = str(uuid.uuid4())
        with self.lock:
            self.requests[request_id] = body["users"]
        return Reply(201, orjson.dumps({"deletion_request_id": request_id, "status": "pending"}), "application/json")
