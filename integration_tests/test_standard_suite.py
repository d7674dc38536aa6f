"""The CDK's own conformance suite (airbyte_cdk.test.standard_tests.DestinationTestSuiteBase), on the
scenarios of acceptance-test-config.yml.

In-process tests (run here): `test_check` (each `connection` config reports its declared status; no
`airbyte_secret` value in the output) and `test_config_matches_spec` (each `spec` config validates against the
spec). The CDK runs them through its AirbyteEntrypoint, so `check` is the CDK's: spec validation first, then
DestinationHeapAnalytics.check.

Image tests (`test_docker_image_*`) need a Docker engine. The base class skips them only when the docker CLI is
missing; here the CLI may exist without an engine, so each one skips unless `docker version` reaches a server.
The published-spec comparison also needs the connector registry (connectors.airbyte.com): it skips, quickly,
when the registry cannot be reached. The same comparison runs offline in unit_tests/test_spec.py against the
stored 0.1.0 spec.

The suite finds the connector by class and root directory given here, not by the name of the directory the
repository is cloned into.
"""

from __future__ import annotations

import functools
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from airbyte_cdk.test import entrypoint_wrapper
from airbyte_cdk.test.standard_tests import ConnectorTestScenario, DestinationTestSuiteBase
from airbyte_cdk.test.standard_tests._job_runner import run_test_job

# The scenario hook (parametrizes `scenario` from get_scenarios) and the fixtures the image tests take, used
# from this module so that no conftest or pytest.ini has to load the CDK's plugin.
from airbyte_cdk.test.standard_tests.pytest_hooks import pytest_generate_tests  # noqa: F401

from destination_heap_analytics import DestinationHeapAnalytics
from heap_standin import HeapStandin

CONNECTOR_ROOT = Path(__file__).resolve().parents[1]
STANDIN_PLACEHOLDER = "http://127.0.0.1:8765"  # what the scenario configs name; see acceptance-test-config.yml
DELETION_API_KEY = json.loads((CONNECTOR_ROOT / "integration_tests/configs/valid_delete_users.json").read_text())[
    "api"
]["api_key"]
REGISTRY_HOST = ("connectors.airbyte.com", 443)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


STANDIN_PORT = _free_loopback_port()  # chosen at import, before the scenarios are collected
STANDIN_URL = f"http://127.0.0.1:{STANDIN_PORT}"

# What a FAILED check must say for each expected-failure scenario (the CDK asserts only the status).
FAILURE_WORDS = {
    "invalid_unreachable": ["Cannot connect", "127.0.0.1:1"],
    "invalid_app_id": ["app_id"],
    "invalid_delete_users_wrong_key": ["api_key", "401"],
}


@functools.cache
def docker_engine_problem() -> str | None:
    """None if a Docker engine answers; else why the image tests cannot run."""
    try:
        version = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, timeout=15
        )
    except FileNotFoundError:
        return "the docker CLI is not installed"
    except subprocess.TimeoutExpired:
        return "`docker version` did not answer within 15 s"
    if version.returncode != 0 or not version.stdout.strip():
        return f"no Docker engine answers (`docker version`: {(version.stderr or version.stdout).strip()[:200]})"
    return None


def skip_without_docker_engine() -> None:
    problem = docker_engine_problem()
    if problem:
        pytest.skip(f"image test needs a Docker engine: {problem}")


@pytest.fixture
def connector_image_override(request: pytest.FixtureRequest) -> str | None:
    return request.config.getoption("--connector-image", default=None)


@pytest.fixture
def connector_base_image_override(request: pytest.FixtureRequest) -> str | None:
    return request.config.getoption("--connector-base-image", default=None)


@pytest.fixture
def read_from_streams() -> str:
    return "none"  # a destination has no streams to read


@pytest.fixture
def read_scenarios() -> list[str]:
    return []


@pytest.fixture(scope="module", autouse=True)
def heap_standin():
    """The Heap stand-in the scenario configs are pointed at, accepting only the scenario deletion key."""
    standin = HeapStandin(port=STANDIN_PORT, api_key=DELETION_API_KEY).start()
    try:
        yield standin
    finally:
        standin.stop()


class TestHeapAnalyticsStandardSuite(DestinationTestSuiteBase):
    connector = DestinationHeapAnalytics
    connector_name = "destination-heap-analytics"

    @classmethod
    def get_connector_root_dir(cls) -> Path:
        return CONNECTOR_ROOT

    @classmethod
    def get_scenarios(cls) -> list[ConnectorTestScenario]:
        """The scenarios of acceptance-test-config.yml, with configs that name the stand-in's default port
        pointed at this suite's stand-in instead."""
        scenarios = []
        for scenario in super().get_scenarios():
            config = scenario.get_config_dict(connector_root=CONNECTOR_ROOT, empty_if_missing=True)
            if config.get("base_url") == STANDIN_PLACEHOLDER:
                scenario = scenario.model_copy(update={"config_dict": {**config, "base_url": STANDIN_URL}})
            scenarios.append(scenario)
        return scenarios

    # -- our additions ----------------------------------------------------------------------------------------

    def test_scenarios_cover_both_outcomes(self) -> None:
        scenarios = self.get_scenarios()
        statuses = {scenario.id: scenario.status for scenario in scenarios if scenario.runs("check")}
        assert "succeed" in statuses.values() and "failed" in statuses.values(), statuses
        assert set(FAILURE_WORDS) == {name for name, status in statuses.items() if status == "failed"}, statuses

    def test_check_failure_says_what_to_fix(self, scenario: ConnectorTestScenario) -> None:
        if scenario.status != "failed":
            pytest.skip(f"scenario '{scenario.id}' does not expect a FAILED check")
        result: entrypoint_wrapper.EntrypointOutput = run_test_job(
            self.create_connector(scenario), "check", test_scenario=scenario, connector_root=CONNECTOR_ROOT
        )
        message = result.connection_status_messages[-1].connectionStatus.message or ""
        for word in FAILURE_WORDS[scenario.id]:
            assert word in message, f"{word!r} missing from the FAILED message: {message!r}"
        config: dict[str, Any] = scenario.get_config_dict(connector_root=CONNECTOR_ROOT, empty_if_missing=True)
        api_key = (config.get("api") or {}).get("api_key")
        if api_key:
            assert api_key not in message

    # -- image tests: skip unless a Docker engine answers ------------------------------------------------------

    def test_docker_image_build_and_spec(self, connector_image_override, connector_base_image_override) -> None:
        skip_without_docker_engine()
        super().test_docker_image_build_and_spec(connector_image_override, connector_base_image_override)

    def test_docker_image_spec_backward_compatibility(
        self, connector_image_override, connector_base_image_override
    ) -> None:
        skip_without_docker_engine()
        try:  # fail fast offline: the CDK's own fetch retries for up to ~30 s before it skips
            socket.create_connection(REGISTRY_HOST, timeout=3).close()
        except OSError as error:
            pytest.skip(
                f"the connector registry {REGISTRY_HOST[0]} cannot be reached ({error}); the spec is compared "
                "offline with the published 0.1.0 spec in unit_tests/test_spec.py"
            )
        super().test_docker_image_spec_backward_compatibility(connector_image_override, connector_base_image_override)

    def test_docker_image_build_and_check(
        self, scenario, connector_image_override, connector_base_image_override
    ) -> None:
        skip_without_docker_engine()
        if scenario.config_dict is not None and scenario.config_dict.get("base_url") == STANDIN_URL:
            pytest.skip("the stand-in listens on this host's 127.0.0.1, which a container does not reach")
        super().test_docker_image_build_and_check(scenario, connector_image_override, connector_base_image_override)

    def test_docker_image_build_and_config_matches_spec(
        self, scenario, connector_image_override, connector_base_image_override
    ) -> None:
        skip_without_docker_engine()
        super().test_docker_image_build_and_config_matches_spec(
            scenario, connector_image_override, connector_base_image_override
        )

    def test_docker_image_build_and_discover(
        self, scenario, connector_image_override, connector_base_image_override
    ) -> None:
        pytest.skip("a destination has no discover")

    def test_docker_image_build_and_read(
        self, scenario, connector_image_override, connector_base_image_override, read_from_streams, read_scenarios
    ) -> None:
        pytest.skip("a destination has no read")
