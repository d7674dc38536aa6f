"""The build backend: setuptools', plus mypy when the build compiles the mapping (DESTINATION_HEAP_COMPILE=1).

Editable installs are never compiled: a compiled module in the source tree would shadow every later edit of
mapping.py until the next install.
"""

import os
from collections.abc import Callable
from typing import Any

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F403 (every hook not redefined here is setuptools' own)

COMPILE_SWITCH = "DESTINATION_HEAP_COMPILE"
MYPY = "mypy==2.4.1"  # pinned: the compiled module is mypyc's output, so the same source builds the same code


def _pure(hook: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        os.environ.pop(COMPILE_SWITCH, None)
        return hook(*args, **kwargs)

    return run


def get_requires_for_build_wheel(config_settings: dict | None = None) -> list[str]:
    compiling = os.environ.get(COMPILE_SWITCH) == "1"
    # setup.py runs here to find its own requirements, before mypy is there: it runs as a pure build
    return _pure(build_meta.get_requires_for_build_wheel)(config_settings) + ([MYPY] if compiling else [])


get_requires_for_build_editable = _pure(build_meta.get_requires_for_build_editable)
prepare_metadata_for_build_editable = _pure(build_meta.prepare_metadata_for_build_editable)
build_editable = _pure(build_meta.build_editable)
