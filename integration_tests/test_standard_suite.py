"""The CDK's own conformance suite (airbyte_cdk.test.standard_tests.DestinationTestSuiteBase), on the
scenarios of acceptance-test-config.yml.

In-process tests (run here): `test_check` (each `connection` config reports its declared status; no
`airbyte_secret` value in the output) and `test_config_matches_spec` (each `spec` config validates against the
spec). The CDK runs them through its AirbyteEntrypoint, so `check` is the CDK's: spec validation first, then
DestinationHeapAnalytics.check.

Image tests (`test_docker_image_*`) run the CDK's docker commands (`docker run --rm <image> spec`, `check`
with the config mounted) on the image scripts/setup-container.sh builds from the Dockerfile, as the container
tests do. The CDK calls the docker CLI by name; a module fixture puts scripts/podman-as-docker first on PATH,
whose `docker` is podman with the flags this machine needs (runc, host network, rlimits no higher than the
host's), so no Docker engine is needed. The image is given to the CDK rather than built by it: its own build
(`docker buildx`) uses Airbyte's Dockerfile template from the airbyte repository (downloaded from GitHub when the
connector is not inside that repository) on the published python-connector-base image, and neither GitHub nor an
image registry can be reached here. With the host network the check scenarios reach this suite's stand-in on
127.0.0.1, so every one runs in the image too.

The published-spec comparison reads the connector registry (connectors.airbyte.com). Where it cannot be reached
(quickly probed: the CDK's own fetch retries for up to ~30 s), the published 0.1.0 spec stored in
unit_tests/published_spec_0.1.0.json stands in for the registry's entry in both deployment modes, so the image's
spec is still compared.

The suite finds the connector by class and root directory given here, not by the name of the directory the
repository is cloned into.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airbyte_cdk.test import entrypoint_wrapper
from airbyte_cdk.test.standard_tests import ConnectorTestScenario, DestinationTestSuiteBase, docker_base
from airbyte_cdk.test.standard_tests._job_runner import run_test_job
from airbyte_cdk.test.standard_tests._spec_compatibility import PublishedSpec

# The scenario hook (parametrizes `scenario` from get_scenarios) and the fixtures the image tests take, used
# from this module so that no conftest or pytest.ini has to load the CDK's plugin.
from airbyte_cdk.test.standard_tests.pytest_hooks import pytest_generate_tests  # noqa: F401

from destination_heap_analytics import DestinationHeapAnalytics
from heap_standin import HeapStandin
from integration_tests.support import PODMAN_AS_DOCKER, build_connector_image

CONNECTOR_ROOT = Path(__file__).resolve().parents[1]
STANDIN_PLACEHOLDER = "http://127.0.0.1:8765"  # what the scenario configs name; see acceptance-test-config.yml
DELETION_API_KEY = json.loads((CONNECTOR_ROOT / "integration_tests/configs/valid_delete_users.json").read_text())[
    "api"
]["api_key"]
REGISTRY_HOST = ("connectors.airbyte.com", 443)
# What the registry published for 0.1.0 (its destination_heap_analytics/spec.json), for where it cannot be reached.
PUBLISHED_SPEC_PATH = CONNECTOR_ROOT / "unit_tests/published_spec_0.1.0.json"
PUBLISHED_VERSION = "0.1.0"


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


def stored_published_spec(docker_repository: str, registry: str, version: str = "latest") -> PublishedSpec:
    """The registry's entry, offline: the stored 0.1.0 spec, which 0.1.0 emitted in either deployment mode."""
    return PublishedSpec(
        version=PUBLISHED_VERSION, spec=json.loads(PUBLISHED_SPEC_PATH.read_text()), url=PUBLISHED_SPEC_PATH.as_uri()
    )


@pytest.fixture(scope="module")
def podman_as_docker() -> Iterator[None]:
    """The CDK runs `docker` by name: for this module's image tests it is scripts/podman-as-docker/docker."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{PODMAN_AS_DOCKER}{os.pathsep}{os.environ.get('PATH', '')}")
        yield


@pytest.fixture(scope="module")
def connector_image_override(podman_as_docker: None) -> str:
    """The image the CDK's image tests run: the one the container tests build, not one the CDK builds."""
    return build_connector_image()


@pytest.fixture
def connector_base_image_override() -> None:
    return None  # the image is given, so the CDK builds nothing on a base image


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

    # -- image tests, through podman ------------------------------------------------------------------------
    # Each is overridden only to drop the CDK's skip when no `docker` is on PATH as the CDK is imported: the
    # `docker` these tests run comes from the podman_as_docker fixture.

    def test_docker_image_build_and_spec(self, connector_image_override, connector_base_image_override) -> None:
        super().test_docker_image_build_and_spec(connector_image_override, connector_base_image_override)

    def test_docker_image_spec_backward_compatibility(
        self, connector_image_override, connector_base_image_override, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        try:  # fail fast offline: the CDK's own fetch retries for up to ~30 s before it skips
            socket.create_connection(REGISTRY_HOST, timeout=3).close()
        except OSError:
            monkeypatch.setattr(docker_base, "fetch_published_spec", stored_published_spec)
        super().test_docker_image_spec_backward_compatibility(connector_image_override, connector_base_image_override)

    def test_docker_image_build_and_check(
        self, scenario, connector_image_override, connector_base_image_override
    ) -> None:
        super().test_docker_image_build_and_check(scenario, connector_image_override, connector_base_image_override)

    def test_docker_image_build_and_config_matches_spec(
        self, scenario, connector_image_override, connector_base_image_override
    ) -> None:
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
