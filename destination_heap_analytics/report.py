"""What a sync did, counted as it goes and told in the log: progress at a steady interval, a summary at the end.

Only counts, reasons and column names are ever logged, never a record's values (they are personal data).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from destination_heap_analytics.client import DeliveryCounters

logger = logging.getLogger("airbyte")

PROGRESS_INTERVAL_SECONDS = 15.0
UNPARSABLE_LINES_LOGGED = 10


@dataclass
class StreamFigures:
    """One catalog stream's part of the totals, kept by its load."""

    read: int = 0
    sent: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


class SyncReport:
    def __init__(
        self,
        counters: DeliveryCounters,
        dry_run: bool = False,
        streams: tuple[tuple[str, StreamFigures], ...] = (),
    ) -> None:
        self.counters = counters
        # each catalog stream's name and figures (its load keeps them), listed when there are several; the
        # totals below count every stream and line
        self._streams = streams if len(streams) > 1 else ()
        self._sent = "would have been sent (dry run: nothing sent)" if dry_run else "sent and acknowledged by Heap"
        self._sent_short = "would have been sent" if dry_run else "sent"
        self.records_read = 0
        self.records_sent = 0  # acknowledged by Heap
        self.records_merged = 0  # of those, sent merged into an earlier update of their key: items saved
        self.skipped: Counter[str] = Counter()  # reason -> records left out
        self.adjusted: Counter[str] = Counter()  # "truncated bio" -> values changed or left out to fit Heap
        self.states_emitted = 0
        self.states_withheld = 0  # dry run: states never emitted
        self.unparsable_lines = 0
        self._started = time.monotonic()
        self._next_progress = self._started + PROGRESS_INTERVAL_SECONDS

    def read(self, stream: StreamFigures | None = None) -> None:
        self.records_read += 1
        if stream is not None:
            stream.read += 1

    def sent(self, count: int, stream: StreamFigures | None = None, merged: int = 0) -> None:
        """`count` records acknowledged, `merged` of them inside an item of an earlier record of their key."""
        self.records_sent += count
        self.records_merged += merged
        if stream is not None:
            stream.sent += count

    def skip(self, reason: str, stream: StreamFigures | None = None) -> None:
        self.skipped[reason] += 1
        if stream is not None:
            stream.skipped[reason] += 1

    def unparsable(self, number: int, problem: str) -> None:
        """An input line that is not a usable Airbyte message: the first few are logged by position and a fixed
        description of what is wrong, never by content; all are counted."""
        self.unparsable_lines += 1
        if self.unparsable_lines <= UNPARSABLE_LINES_LOGGED:
            logger.warning(f"Input line {number}: {problem}; skipped (content not logged).")

    def unreadable_record(self, number: int, problem: str) -> None:
        """A line meant as a RECORD that no parser can use: counted as a skipped record; the first few are
        logged by position and a fixed description, never by content."""
        self.skip("unreadable_record")
        if self.skipped["unreadable_record"] <= UNPARSABLE_LINES_LOGGED:
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
            logger.info(f"Progress: {self._figures(now)}{self._by_stream()}")

    def log_summary(self, outcome: str) -> None:
        if self.unparsable_lines:
            logger.warning(
                f"{self.unparsable_lines} input lines were not usable Airbyte messages and were skipped "
                f"(the first {min(self.unparsable_lines, UNPARSABLE_LINES_LOGGED)} are logged by line number)."
            )
        logger.info(f"Sync summary ({outcome}): {self._figures(time.monotonic())}{self._by_stream()}")
        if self.skipped:
            logger.warning(f"Records skipped, by reason: {_listing(self.skipped)}")
        if self.adjusted:
            logger.warning(f"Property values adjusted to fit Heap's rules: {_listing(self.adjusted)}")

    def _figures(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        counters = self.counters
        splits = f", {counters.bisections} bulk requests split to isolate refused items" if counters.bisections else ""
        paced = f", {counters.paced_seconds:.1f} s held back by pacing" if counters.paced_seconds else ""
        merged = (
            f", {self.records_merged} records merged into an earlier update of their key (as many items saved)"
            if self.records_merged
            else ""
        )
        states = f"{self.states_emitted} states emitted"
        if self.states_withheld:
            states = f"{self.states_withheld} states not emitted (dry run)"
        return (
            f"{self.records_read} records read, {self.records_sent} {self._sent}, "
            f"{sum(self.skipped.values())} skipped, {states}; "
            f"{counters.requests} requests ({counters.retries} retries, {counters.throttled} throttled){merged}{splits}"
            f"{paced}, {elapsed:.1f} s, {self.records_read / elapsed:.0f} records/s"
        )

    def _by_stream(self) -> str:
        """Each catalog stream's records read, sent and skipped by reason (stream names come from the catalog)."""
        parts = []
        for name, figures in self._streams:
            reasons = f" ({_listing(figures.skipped)})" if figures.skipped else ""
            total = sum(figures.skipped.values())
            parts.append(f"{name}: {figures.read} read, {figures.sent} {self._sent_short}, {total} skipped{reasons}")
        return f". By stream: {'; '.join(parts)}" if parts else ""


def _listing(counts: Counter[str]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in counts.most_common())
