"""Fixtures and pytest hooks of the integration tests. The tests' toolkit (running the connector, building
its input, the guards) is integration_tests/support.py; no test imports from here."""

from __future__ import annotations

import os
from typing import Any

import pytest

from heap_standin import HeapStandin
from integration_tests import reliability, support
from integration_tests.bucket import LocalBucket


@pytest.fixture
def heap():
    """A fresh Heap stand-in on 127.0.0.1 for each test (no rate limits unless a test builds its own)."""
    standin = HeapStandin().start()
    try:
        yield standin
    finally:
        standin.stop()


@pytest.fixture
def bucket():
    """An S3 bucket of its own on a local S3-compatible server (moto's), for rejected records."""
    with LocalBucket() as local:
        yield local


def pytest_configure(config: pytest.Config) -> None:
    """One reliability figures file for the whole run: pytest-xdist's workers inherit the environment."""
    if not hasattr(config, "workerinput"):
        os.environ.setdefault(reliability.ENV_VAR, str(reliability.figures_path()))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    support.close_outbound_guard()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What the adversarial tests put the connector through, as docs/reliability.md quotes it."""
    lines = reliability.summary_lines()
    if lines:
        terminalreporter.section("reliability")
        for line in lines:
            terminalreporter.write_line(line)
