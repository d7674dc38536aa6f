import os
import sys


def run() -> None:
    if sys.stdout is None:  # started with stdout closed: no Airbyte message could ever be read
        if sys.stderr is not None:
            sys.stderr.write("destination-heap-analytics: stdout is closed; its messages would be lost.\n")
        os._exit(1)
    if sys.argv[1:] == ["spec"]:
        # The platform asks for the spec whenever it loads the connector: it is answered without importing the
        # CDK, most of a cold start.
        import orjson

        from destination_heap_analytics.config import specification

        sys.stdout.write(orjson.dumps({"type": "SPEC", "spec": specification()}).decode() + "\n")
        return
    from destination_heap_analytics.destination import DestinationHeapAnalytics

    DestinationHeapAnalytics().run(sys.argv[1:])
