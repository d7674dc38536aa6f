"""The test run that says it tests the compiled mapping (scripts/test.sh, DESTINATION_HEAP_COMPILE=1) does."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from destination_heap_analytics import mapping

COMPILED = os.environ.get("DESTINATION_HEAP_COMPILE") == "1"


@pytest.mark.skipif(not COMPILED, reason="the pure-Python run: nothing compiled to check")
def test_the_compiled_mapping_is_the_one_under_test():
    assert Path(mapping.__file__).suffix == ".so", f"these tests import {mapping.__file__}"
    connector = Path(sys.executable).parent / "destination-heap-analytics"
    script_python = connector.read_text().splitlines()[0].removeprefix("#!")
    imported = subprocess.run(
        [script_python, "-c", "import destination_heap_analytics.mapping as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout.strip()
    assert Path(imported).suffix == ".so", f"the console script imports {imported}"
