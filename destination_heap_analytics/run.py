import os
import sys

from destination_heap_analytics.destination import DestinationHeapAnalytics


def run() -> None:
    if sys.stdout is None:  # started with stdout closed: no Airbyte message could ever be read
        if sys.stderr is not None:
            sys.stderr.write("destination-heap-analytics: stdout is closed; its messages would be lost.\n")
        os._exit(1)
    DestinationHeapAnalytics().run(sys.argv[1:])
