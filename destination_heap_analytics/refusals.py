"""What to do when Heap refuses a request (400, 413, 422): a pure decision from the evidence.

Heap documents no per-item error for bulk requests: one bad item may fail the whole request, and a refusal may also
be about the request itself (a wrong app_id, a proxy's size limit) or Heap's passing trouble. `decide` weighs what the
refusal and the endpoint's answers so far show; the driver (delivery.py) acts on it and holds no lock while it waits.
The rules, in the order they apply:

1. A refused deletion stops the sync: a deletion is never skipped.
2. `RUN_LIMIT` refusals naming no item in a row at the endpoint, none accepted between, stop the sync: a config error
   where Heap accepted nothing there (it refuses the requests themselves: the app_id, base_url, a proxy), a transient
   one where it did earlier (it changed its mind mid-sync). Without this rule a request-level refusal would be split
   down to every single item; with it, no state passes a record Heap did not take.
3. A request of several items, or of one item merged from several records, is split in two halves, sent in order:
   the refusal is narrowed down to the items and records it is about (log2 of the request deep).
4. One record, refused alone where Heap names it (`postBody.events[0].properties ...`): rejected.
5. One record refused alone without a name is only a suspect: Heap may be refusing everything for a while. It is
   tried again after the request's other items (one key per request: no later update of its key can pass it),
   after a pause when nothing else is left, and rejected only once it has been refused alone `LONE_REFUSALS`
   times and Heap has accepted another request at the endpoint since a request holding it was first refused: so a
   random refusal, or a spell of refusals, never skips a good record (rule 2 ends the latter).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from destination_heap_analytics.client import CHECK_BASE_URL

RUN_LIMIT = 30  # refusals naming no item, in a row at one endpoint: with those in flight, well under 50 requests
LONE_REFUSALS = 3  # a suspect's refusals alone before it is rejected (given an acceptance since it was refused)


class Action(enum.Enum):
    SPLIT = "split"  # send the request again as two halves, in order
    REJECT = "reject"  # the one record is Heap's to refuse: skipped, counted, stored
    RETRY = "retry"  # send the one record again after a pause
    STOP = "stop"  # the sync stops: no state passes what Heap did not take


@dataclass(frozen=True, slots=True)
class Evidence:
    """A refusal and what the endpoint's answers so far show."""

    path: str  # the endpoint
    reason: str  # Heap's refusal, safe to log
    records: int  # in the refused request: behind its items (more than its items where updates merged)
    names_item: bool  # Heap's text points into one item
    deletion: bool = False
    run: int = 1  # refusals naming no item in a row at the endpoint, this one included
    accepted_any: bool = False  # Heap accepted a request at the endpoint in this sync
    lone_refusals: int = 0  # the one record's refusals alone without a name, this one included
    accepted_since_refused: bool = False  # Heap accepted another request there since one holding it was refused


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    message: str = ""  # STOP: what the user is told
    transient: bool = False  # STOP: running the sync again later may work


def decide(evidence: Evidence) -> Decision:
    if evidence.deletion:
        return Decision(
            Action.STOP,
            f"Heap refused a deletion request ({evidence.reason}): its users are not deleted, and a deletion is never "
            "skipped. Check the users' identities or user_ids and the deletion api_key, then run the sync again; it "
            "resumes from the last state.",
        )
    if not evidence.names_item and evidence.run >= RUN_LIMIT:
        return _run_refused(evidence)
    if evidence.records > 1:
        return Decision(Action.SPLIT)
    if evidence.names_item:
        return Decision(Action.REJECT)
    if evidence.lone_refusals >= LONE_REFUSALS and evidence.accepted_since_refused:
        return Decision(Action.REJECT)
    return Decision(Action.RETRY)


def _run_refused(evidence: Evidence) -> Decision:
    if not evidence.accepted_any:
        return Decision(
            Action.STOP,
            f"Heap refused {evidence.run} requests in a row at {evidence.path} without naming an item it refuses "
            f"(last: {evidence.reason}) and accepted none from this sync: it refuses the requests themselves. Nothing "
            f"more is sent. {CHECK_BASE_URL}",
        )
    return Decision(
        Action.STOP,
        f"Heap accepted requests at {evidence.path} earlier in this sync, then refused {evidence.run} in a row without "
        f"naming an item it refuses (last: {evidence.reason}). Nothing more is sent, and no state passes a record Heap "
        "did not take: run the sync again later; if it keeps failing, check app_id, that the Heap environment still "
        "accepts data, and any proxy between this host and Heap that limits requests.",
        transient=True,
    )
