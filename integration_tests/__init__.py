"""Integration tests: the installed connector, run as a subprocess against the local Heap stand-in."""
