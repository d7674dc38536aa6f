"""The connector installed with the LOWEST versions setup.py declares for its direct dependencies loads records
through a throttled request: what `install_requires` promises works, not only what the newest releases do.

The constraints are generated from setup.py's `>=` bounds, so the test follows a bound when it changes. The
venv is built from the package index once per setup.py (under the ignored build/ directory) and reused; the
test is skipped only when the index cannot be reached.
"""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from heap_standin import Fault
from integration_tests.support import (
    PROJECT_ROOT,
    TRACK_API,
    assert_no_traceback,
    catalog,
    config,
    interleave,
    people,
    run_connector,
    states_of,
    stored,
)

SETUP_PY = PROJECT_ROOT / "setup.py"
VENVS = PROJECT_ROOT / "build" / "lowest-dependencies"
# What pip says when it cannot reach the index at all (as opposed to a version that does not resolve)
UNREACHABLE = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable", "ConnectTimeout")


def declared_requirements() -> list[Requirement]:
    """setup.py's install_requires, read from its source (not from an installed copy, which may be older)."""
    tree = ast.parse(SETUP_PY.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return [Requirement(text) for text in ast.literal_eval(node.value)]
    raise AssertionError("setup.py has no install_requires")


def lowest_constraints(requirements: list[Requirement]) -> list[str]:
    """`name==bound` for each requirement's `>=` bound; a requirement without one has no lowest version to test."""
    constraints = []
    for requirement in requirements:
        bounds = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert len(bounds) == 1, f"setup.py: {requirement} needs one lower bound (>=) that is a released version"
        constraints.append(f"{requirement.name}=={bounds[0]}")
    return constraints


def test_every_direct_dependency_has_a_lower_bound():
    constraints = lowest_constraints(declared_requirements())
    assert any(line.startswith("urllib3==") for line in constraints), "urllib3 is a direct dependency"


def lowest_venv() -> Path:
    """A venv holding the connector (editable: the checkout's code) and exactly the lowest declared versions;
    built once per setup.py text."""
    constraints = lowest_constraints(declared_requirements())
    venv = VENVS / hashlib.sha256(SETUP_PY.read_bytes()).hexdigest()[:16]
    script = venv / "bin" / "destination-heap-analytics"
    if script.exists():
        return venv
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    (venv / "constraints.txt").write_text("\n".join(constraints) + "\n")
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--retries", "1", "--timeout", "30",
         "--constraint", str(venv / "constraints.txt"), "--editable", str(PROJECT_ROOT)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if install.returncode != 0:
        if any(sign in install.stderr for sign in UNREACHABLE):
            pytest.skip(
                f"the package index is unreachable, so the lowest versions cannot be installed: {install.stderr[-300:]}"
            )
        pytest.fail(f"the lowest declared versions do not install together:\n{install.stderr[-3000:]}")
    return venv


def installed_versions(venv: Path) -> dict[str, str]:
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "freeze"], capture_output=True, text=True
    )
    pairs = (line.split("==") for line in listed.stdout.splitlines() if "==" in line)
    return {Requirement(name).name.lower().replace("_", "-"): version for name, version in pairs}


@pytest.mark.slow
def test_the_lowest_declared_dependencies_load_records_through_a_429_with_retry_after(heap):
    venv = lowest_venv()
    installed = installed_versions(venv)
    for line in lowest_constraints(declared_requirements()):
        name, version = line.split("==")
        assert Requirement(f"{name}=={version}").specifier.contains(installed[name.lower()]), (name, installed)
    rows = people(20)
    messages = interleave(rows, every=10)
    heap.inject(Fault(status=429, retry_after=1))
    result = run_connector(
        "write",
        config(heap, TRACK_API, max_concurrent_requests=1),
        catalog(),
        messages,
        argv=[str(venv / "bin" / "destination-heap-analytics"), "write"],
    )
    assert_no_traceback(result)
    assert result.returncode == 0, result.describe()
    assert (heap.stats()["by_status"]["429"], result.summary["throttled"]) == (1, 1)
    assert sorted(event["identity"] for event in stored(heap, "track")) == sorted(row["email"] for row in rows)
    assert result.states == states_of(messages)
