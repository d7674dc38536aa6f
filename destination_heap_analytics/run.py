import os
import sys


def run() -> None:
    if sys.stdout is None:  # started with stdout closed: no Airbyte message could ever be read
        if sys.stderr is not None:
            sys.stderr.write("destination-heap-analytics: stdout is closed; its messages would be lost.\n")
        os._exit(1)
    if sys.argv[1:] == ["spec"]:  # the same spec the CDK's Destination gives, without loading the CDK
        from destination_heap_analytics.spec import spec_message

        sys.stdout.write(spec_message() + "\n")
        return
    from destination_heap_analytics.destination import DestinationHeapAnalytics

    DestinationHeapAnalytics().run(sys.argv[1:])
