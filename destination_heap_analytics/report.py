"""What a sync did, told in the log: progress at a steady interval, a summary at the end.

Every record figure is read from the StateLedger's book (state.py), where each record's fate is booked once; this
module only counts what is not a record's fate (states emitted, unusable lines, values adjusted) and words it.
Only counts, reasons and column names are ever logged, never a record's values (they are personal data).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Hashable

from destination_heap_analytics.client import DeliveryCounters
from destination_heap_analytics.state import StateLedger, StreamFigures

logger = logging.getLogger("airbyte")

PROGRESS_INTERVAL_SECONDS = 15.0
UNPARSABLE_LINES_LOGGED = 10


class SyncReport:
    def __init__(
        self, ledger: StateLedger, counters: DeliveryCounters, labels: dict[Hashable, str], dry_run: bool = False
    ) -> None:
        self._ledger = ledger
        self.counters = counters
        self._labels = labels if len(labels) > 1 else {}  # each catalog stream by name, listed when there are several
        self._sent = "would have been sent (dry run: nothing sent)" if dry_run else "sent and acknowledged by Heap"
        self._sent_short = "would have been sent" if dry_run else "sent"
        self.adjusted: Counter[str] = Counter()  # "truncated bio" -> values changed or left out to fit Heap
        self.states_emitted = 0
        self.states_withheld = 0  # dry run: states never emitted
        self.unparsable_lines = 0
        self.unreadable_records = 0
        self._started = time.monotonic()
        self._next_progress = self._started + PROGRESS_INTERVAL_SECONDS

    def totals(self, snapshot: dict[Hashable, StreamFigures] | None = None) -> StreamFigures:
        """Every stream's figures added up."""
        total = StreamFigures()
        for figures in (snapshot or self._ledger.snapshot()).values():
            total.read += figures.read
            total.delivered += figures.delivered
            total.items += figures.items
            total.rejected.update(figures.rejected)
        return total

    def unparsable(self, number: int, problem: str) -> None:
        """An input line that is not a usable Airbyte message: the first few are logged by position and a fixed
        description of what is wrong, never by content; all are counted."""
        self.unparsable_lines += 1
        if self.unparsable_lines <= UNPARSABLE_LINES_LOGGED:
            logger.warning(f"Input line {number}: {problem}; skipped (content not logged).")

    def unreadable_record(self, number: int, problem: str) -> None:
        """A line meant as a RECORD that no parser can use (booked as rejected): the first few are logged by position
        and a fixed description, never by content."""
        self.unreadable_records += 1
        if self.unreadable_records <= UNPARSABLE_LINES_LOGGED:
            logger.warning(f"Input line {number} ({problem}): an invalid record, skipped (content not logged).")

    def state_withheld(self) -> None:
        """Dry run: a STATE would move the source's cursor past records that were never sent."""
        if not self.states_withheld:
            logger.info(
                "Dry run: no STATE is emitted, so the source's cursor does not move past records that were not "
                "sent; the next real sync reads them again."
            )
        self.states_withheld += 1

    def adjust(self, notes: list[tuple[str, str]]) -> None:
        for kind, name in notes:
            self.adjusted[f"{kind} {name}"] += 1

    def maybe_log_progress(self) -> None:
        now = time.monotonic()
        if now >= self._next_progress:
            self._next_progress = now + PROGRESS_INTERVAL_SECONDS
            snapshot = self._ledger.snapshot()
            logger.info(f"Progress: {self._figures(now, snapshot)}{self._by_stream(snapshot)}")

    def log_summary(self, outcome: str) -> None:
        if self.unparsable_lines:
            logger.warning(
                f"{self.unparsable_lines} input lines were not usable Airbyte messages and were skipped "
                f"(the first {min(self.unparsable_lines, UNPARSABLE_LINES_LOGGED)} are logged by line number)."
            )
        snapshot = self._ledger.snapshot()
        logger.info(f"Sync summary ({outcome}): {self._figures(time.monotonic(), snapshot)}{self._by_stream(snapshot)}")
        rejected = self.totals(snapshot).rejected
        if rejected:
            logger.warning(f"Records skipped, by reason: {_listing(rejected)}")
        if self.adjusted:
            logger.warning(f"Property values adjusted to fit Heap's rules: {_listing(self.adjusted)}")

    def _figures(self, now: float, snapshot: dict[Hashable, StreamFigures]) -> str:
        elapsed = max(now - self._started, 1e-9)
        total = self.totals(snapshot)
        counters = self.counters
        splits = f", {counters.bisections} bulk requests split to isolate refused items" if counters.bisections else ""
        paced = f", {counters.paced_seconds:.1f} s held back by pacing" if counters.paced_seconds else ""
        merged = total.delivered - total.items
        merges = f", {merged} records merged into an earlier update of their key (as many items saved)"
        merges = merges if merged else ""
        states = f"{self.states_emitted} states emitted"
        if self.states_withheld:
            states = f"{self.states_withheld} states not emitted (dry run)"
        return (
            f"{total.read} records read, {total.delivered} {self._sent}, "
            f"{sum(total.rejected.values())} skipped, {states}; "
            f"{counters.requests} requests ({counters.retries} retries, {counters.throttled} throttled){merges}{splits}"
            f"{paced}, {elapsed:.1f} s, {total.read / elapsed:.0f} records/s"
        )

    def _by_stream(self, snapshot: dict[Hashable, StreamFigures]) -> str:
        """Each catalog stream's records read, sent and skipped by reason (stream names come from the catalog)."""
        parts = []
        for key, name in self._labels.items():
            figures = snapshot.get(key) or StreamFigures()
            reasons = f" ({_listing(figures.rejected)})" if figures.rejected else ""
            total = sum(figures.rejected.values())
            sent = f"{figures.delivered} {self._sent_short}"
            parts.append(f"{name}: {figures.read} read, {sent}, {total} skipped{reasons}")
        return f". By stream: {'; '.join(parts)}" if parts else ""


def _listing(counts: Counter[str]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in counts.most_common())
