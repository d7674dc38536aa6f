"""A local stand-in for Heap's server-side ingestion APIs, for developing and testing the connector.

Heap is not reachable from the machines this connector is built and tested on, so this package serves the
same ingestion endpoints (and the user deletion API) on a loopback address, enforces Heap's published request
rules (field types and sizes, bulk limits, rate limits), records what it accepted (track events deduplicated by
idempotency key, the duplicates counted) and can misbehave on purpose (latency, 429, 5xx, hangs, connection
resets).

It is a development tool of this repository, not part of the connector's package, and it imports nothing
from ``destination_heap_analytics``: it checks the connector independently. Used three ways:
- in-process by tests: ``with HeapStandin() as heap: ... heap.events``;
- as a subprocess by the benchmark, driven through the ``/_standin/*`` control endpoints;
- from the command line, in a checkout: ``.venv/bin/python -m heap_standin --port 8765``.

It only ever binds loopback addresses and never opens outbound connections.

Modules: ``rules`` (what Heap accepts), ``limits`` (rate limits), ``store`` (what it holds, counters),
``deletions`` (the deletion API), ``faults`` and ``server`` (HTTP, fault injection, control endpoints),
``standin`` (HeapStandin), ``__main__`` (the command line).
"""

from heap_standin.faults import Fault, faults_from_dicts
from heap_standin.rules import ENDPOINTS
from heap_standin.standin import HeapStandin
from heap_standin.store import Predicate

__all__ = ["ENDPOINTS", "Fault", "HeapStandin", "Predicate", "faults_from_dicts"]
