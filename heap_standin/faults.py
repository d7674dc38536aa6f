"""Misbehaviour on purpose: what the stand-in does instead of answering a request (see HeapStandin.inject)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    """One misbehaviour, applied to one future ``/api/*`` request.

    Exactly one kind per fault: ``status`` (answer that status, optionally with ``Retry-After``),
    ``hang_seconds`` (say nothing for that long, then close the connection), ``reset`` (close with RST) or
    ``delay_seconds`` (answer as usual, that much later: a slow request, not a failed one).
    With ``after_store`` the request is first processed as usual (a valid body is stored) and the fault replaces
    the answer: the client never learns that Heap holds the items, so resending them is legitimate.
    """

    status: int | None = None
    retry_after: float | None = None
    hang_seconds: float | None = None
    reset: bool = False
    after_store: bool = False
    delay_seconds: float | None = None

    def __post_init__(self) -> None:
        kinds = sum(
            (self.status is not None, self.hang_seconds is not None, self.reset, self.delay_seconds is not None)
        )
        if kinds != 1:
            raise ValueError("a Fault needs exactly one of status, hang_seconds, reset or delay_seconds")
        if self.delay_seconds is not None and self.after_store:
            raise ValueError("a delay answers as usual: after_store does not go with it")
        if self.retry_after is not None and self.status is None:
            raise ValueError("retry_after only goes with status")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError("a Fault status must be an HTTP error status (400..599)")

    @property
    def kind(self) -> str:
        """The label the stand-in counts a served fault under: "503", "429_retry_after", "hang", "reset",
        "delay", with "_after_store" appended for a fault that came after the items were stored."""
        if self.status is not None:
            base = f"{self.status}_retry_after" if self.retry_after is not None else str(self.status)
        elif self.delay_seconds is not None:
            base = "delay"
        else:
            base = "hang" if self.hang_seconds is not None else "reset"
        return base + ("_after_store" if self.after_store else "")


def faults_from_dicts(specs: Iterable[dict]) -> list[Fault]:
    """Build faults from the JSON shape the /_standin/faults endpoint takes."""
    return [Fault(**spec) for spec in specs]
