import sys

from destination_heap_analytics.destination import DestinationHeapAnalytics


def run() -> None:
    DestinationHeapAnalytics().run(sys.argv[1:])
