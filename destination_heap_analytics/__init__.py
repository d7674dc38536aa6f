from destination_heap_analytics.destination import DestinationHeapAnalytics

__all__ = ["DestinationHeapAnalytics"]
