"""The command line: ``python -m heap_standin --port 8765 [--latency-ms 20] [--track-events-per-minute 15000]
[--summary-only]``. Prints one line, ``heap-standin listening on <url>``, then serves until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from heap_standin.replies import ACKNOWLEDGEMENTS
from heap_standin.rules import is_loopback_host
from heap_standin.standin import HeapStandin

READY_PREFIX = "heap-standin listening on "


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="heap-standin", description="Serve a local stand-in for Heap's APIs."
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default 8765)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added latency per /api/* request")
    parser.add_argument("--track-events-per-minute", type=int, default=0, help="bulk track limit per app_id")
    parser.add_argument("--enforce-identity-limits", action="store_true", help="per-identity rate limits")
    parser.add_argument(
        "--acknowledgement", choices=sorted(ACKNOWLEDGEMENTS), default="empty", help="how a success answers"
    )
    parser.add_argument("--summary-only", action="store_true", help="keep counts only, not the items")
    args = parser.parse_args(argv)
    if not is_loopback_host(args.host):
        parser.error(f"refusing to bind {args.host!r}: the Heap stand-in only binds loopback addresses")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    standin = HeapStandin(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        track_events_per_minute=args.track_events_per_minute,
        enforce_identity_limits=args.enforce_identity_limits,
        keep_items=not args.summary_only,
        acknowledgement=args.acknowledgement,
    )
    try:
        standin.start()
    except OSError as exc:
        print(f"heap-standin: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(READY_PREFIX + standin.url, flush=True)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    while not stopping.wait(0.5):
        pass
    standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
