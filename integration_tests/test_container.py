"""The connector image: built from the Dockerfile with podman, then spec, check and write run through it.

A module fixture runs scripts/setup-container.sh (installs podman, runc and debootstrap from Debian when missing,
makes the local Python base image, builds localhost/destination-heap-analytics:dev). The containers run through
scripts/podman-as-docker/docker, podman with the flags a machine without a Docker engine needs (runc, host network
so the in-process stand-in on 127.0.0.1 is reachable, rlimits no higher than the host's), with the config
directory mounted read-only, and behave exactly like the installed console script: same spec, same items in
Heap, same STATE messages.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from heap_standin import HeapStandin
from integration_tests.support import (
    PROJECT_ROOT,
    build_connector_image,
    docker_run,
    run_connector,
    sample_catalog,
    sample_config,
    sample_messages,
    states_of,
)

RUN_TIMEOUT = 120.0
SAMPLE_KINDS = ("track", "user_properties", "account_properties")


@contextmanager
def mounted(**files: dict) -> Iterator[list[str]]:
    """JSON files in a fresh directory, readable by the image's non-root user, as `-v dir:/secrets:ro`."""
    with tempfile.TemporaryDirectory(prefix="heap-container-") as tmp:
        directory = Path(tmp)
        for name, content in files.items():
            path = directory / f"{name}.json"
            path.write_text(json.dumps(content))
            path.chmod(0o644)
        directory.chmod(0o755)
        yield ["-v", f"{directory}:/secrets:ro"]


@pytest.fixture(scope="module")
def image() -> str:
    return build_connector_image()


def inspect(image: str) -> dict:
    output = subprocess.run(
        ["podman", "image", "inspect", image], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return json.loads(output)[0]


def image_env(info: dict) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in info["Config"].get("Env") or [])


def metadata() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "metadata.yaml").read_text())["data"]


def package_version() -> str:
    match = re.search(r"""version\s*=\s*["']([^"']+)["']""", (PROJECT_ROOT / "setup.py").read_text())
    assert match, "setup.py has no version="
    return match[1]


# ------------------------------------------------------------------------------------------------------------
# The image itself


def test_dockerfile_takes_its_base_image_as_a_build_argument():
    """`ARG BASE_IMAGE=<the real default>` then `FROM ${BASE_IMAGE}`; the default is metadata.yaml's base image."""
    lines = [line.strip() for line in (PROJECT_ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    froms = [i for i, line in enumerate(instructions) if line.upper().startswith("FROM ")]
    assert froms, "the Dockerfile has no FROM"
    assert re.fullmatch(r"FROM\s+\$\{?BASE_IMAGE\}?(\s+AS\s+\S+)?", instructions[froms[0]], re.IGNORECASE), (
        f"the first FROM must use the BASE_IMAGE build argument: {instructions[froms[0]]!r}"
    )
    args = [re.fullmatch(r"ARG\s+BASE_IMAGE=(\S+)", line) for line in instructions[: froms[0]]]
    defaults = [match[1] for match in args if match]
    assert defaults, "ARG BASE_IMAGE=<default> must come before the FROM that uses it"
    assert defaults[-1] == metadata()["connectorBuildOptions"]["baseImage"]


def test_image_labels_entrypoint_and_user(image):
    info = inspect(image)
    labels = info["Config"].get("Labels") or {}
    env = image_env(info)
    meta = metadata()
    assert labels.get("io.airbyte.name") == meta["dockerRepository"]
    assert labels.get("io.airbyte.version") == meta["dockerImageTag"] == package_version()
    assert env.get("AIRBYTE_ENTRYPOINT"), "AIRBYTE_ENTRYPOINT must be set in the image"
    assert info["Config"].get("Entrypoint") == env["AIRBYTE_ENTRYPOINT"].split()
    user = info["Config"].get("User") or ""
    assert user and user.split(":")[0] not in ("root", "0"), f"the image must not run as root (User={user!r})"


def test_container_runs_as_a_non_root_user_and_airbyte_entrypoint_works(image):
    """What the platform does with AIRBYTE_ENTRYPOINT (run it with the command's arguments) gives the spec."""
    uid = subprocess.run(
        docker_run("--entrypoint", "id", image, "-u"), capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert uid.returncode == 0, uid.stderr
    assert uid.stdout.strip() not in ("", "0"), f"the container runs as uid {uid.stdout.strip()!r}"
    via_env = run_connector(
        "spec",
        argv=docker_run("--entrypoint", "/bin/sh", image, "-c", 'exec $AIRBYTE_ENTRYPOINT "$@"', "sh", "spec"),
        timeout=RUN_TIMEOUT,
    )
    assert via_env.returncode == 0, via_env.describe()
    assert [m["type"] for m in via_env.messages if m["type"] != "LOG"] == ["SPEC"], via_env.describe()


def test_the_image_ships_the_connector_and_nothing_else(image):
    """The installed distribution is the connector's, at metadata's version; the stand-in and the tests stay out."""
    script = (
        "import importlib.metadata as m, importlib.util as u; "
        "print(m.version('airbyte-destination-heap-analytics'), u.find_spec('heap_standin') is None, "
        "u.find_spec('integration_tests') is None)"
    )
    found = subprocess.run(
        docker_run("--entrypoint", "python3", image, "-c", script), capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [metadata()["dockerImageTag"], "True", "True"], found.stdout


# ------------------------------------------------------------------------------------------------------------
# spec, check, write through the container


def test_spec_through_the_container_is_the_installed_connectors_spec(image):
    contained = run_connector("spec", argv=docker_run(image, "spec"), timeout=RUN_TIMEOUT)
    assert contained.returncode == 0, contained.describe()
    specs = [m["spec"] for m in contained.messages if m["type"] == "SPEC"]
    assert len(specs) == 1, contained.describe()
    local = run_connector("spec")
    assert specs == [m["spec"] for m in local.messages if m["type"] == "SPEC"]
    assert specs[0]["connectionSpecification"]["required"], "the spec must require fields"


def test_check_through_the_container_reaches_the_standin_and_writes_nothing(image, heap):
    config = sample_config("track", heap)
    with mounted(config=config) as volume:
        result = run_connector(
            "check", argv=docker_run(*volume, image, "check", "--config", "/secrets/config.json"), timeout=RUN_TIMEOUT
        )
    assert result.returncode == 0, result.describe()
    assert [s["status"] for s in result.statuses] == ["SUCCEEDED"], result.describe()
    assert heap.stats()["requests"] == 0, "check sent something into Heap"


def test_check_through_the_container_fails_cleanly_when_heap_is_unreachable(image):
    closed = HeapStandin().start()
    url = closed.url
    closed.stop()  # nothing listens on that port any more
    config = sample_config("track", closed)
    config["base_url"] = url
    with mounted(config=config) as volume:
        result = run_connector(
            "check", argv=docker_run(*volume, image, "check", "--config", "/secrets/config.json"), timeout=RUN_TIMEOUT
        )
    assert [s["status"] for s in result.statuses] == ["FAILED"], result.describe()


def _sorted_items(items: list[dict]) -> list[str]:
    return sorted(json.dumps(item, sort_keys=True) for item in items)


@pytest.mark.parametrize("kind", SAMPLE_KINDS)
def test_write_through_the_container_delivers_like_the_installed_connector(image, heap, kind):
    """sample_files/messages.jsonl through the image into the stand-in: every record arrives, every STATE comes
    out in order, and Heap holds exactly what the installed console script delivers for the same input."""
    messages = sample_messages()
    config = sample_config(kind, heap)
    with mounted(config=config, catalog=sample_catalog()) as volume:
        contained = run_connector(
            "write",
            messages=messages,
            argv=docker_run(
                *volume, image, "write", "--config", "/secrets/config.json", "--catalog", "/secrets/catalog.json"
            ),
            timeout=RUN_TIMEOUT,
        )
    assert contained.returncode == 0, contained.describe()
    held = heap.events + heap.users + heap.accounts
    assert held, f"nothing arrived in the stand-in\n{contained.describe()}"
    assert contained.states == states_of(messages), "STATE messages lost, reordered or altered"
    summary = contained.summary
    assert summary["outcome"] == "succeeded"
    assert summary["read"] == sum(1 for m in messages if m["type"] == "RECORD")
    assert summary["sent"] == len(held)

    with HeapStandin() as local_heap:
        local = run_connector("write", sample_config(kind, local_heap), sample_catalog(), messages)
        assert local.returncode == 0, local.describe()
        assert local.states == contained.states
        expected = local_heap.events + local_heap.users + local_heap.accounts
    assert _sorted_items(held) == _sorted_items(expected), "the image delivers other items than the installed connector"
