"""The Heap Analytics destination: `DestinationHeapAnalytics`, the CDK `Destination` (imported on first use, so
that `spec` answers without loading the CDK)."""

from typing import Any

__all__ = ["DestinationHeapAnalytics"]


def __getattr__(name: str) -> Any:
    if name == "DestinationHeapAnalytics":
        from destination_heap_analytics.destination import DestinationHeapAnalytics

        return DestinationHeapAnalytics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
