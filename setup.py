import os

from setuptools import find_packages, setup

# The modules mypyc compiles to C when DESTINATION_HEAP_COMPILE=1 (the container image does): mapping is most of
# a record's CPU, and compiled it takes about 30% off a track record's parse + map + encode (measured, README).
COMPILED_MODULES = ["destination_heap_analytics/mapping.py"]


def compiled_extensions() -> list:
    if os.environ.get("DESTINATION_HEAP_COMPILE") != "1":
        return []  # pure Python: the same code, interpreted
    from mypyc.build import mypycify  # the build backend (build_backend.py) installs mypy for this build

    # --ignore-missing-imports: the connector's dependencies may not be installed yet where the build runs, and
    # jsonpath-ng has no type information: their calls are then typed Any, compiled as ordinary Python calls
    return mypycify(["--ignore-missing-imports", *COMPILED_MODULES])


setup(
    name="destination-heap-analytics",
    version="0.2.0",
    description="Airbyte destination that loads one stream into Heap Analytics through Heap's server-side APIs.",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["destination_heap_analytics", "destination_heap_analytics.*"]),
    package_data={"destination_heap_analytics": ["spec.json"]},
    ext_modules=compiled_extensions(),
    install_requires=[
        "airbyte-cdk>=7,<8",
        "requests>=2.32.3",
        "urllib3>=2",
        "pendulum>=3",
        "jsonpath-ng>=1.6",
        "orjson>=3.9",
        "xxhash>=3.4",
    ],
    extras_require={
        "tests": ["pytest>=8", "hypothesis>=6.100", "ruff>=0.5"],
    },
    entry_points={
        "console_scripts": [
            "destination-heap-analytics=destination_heap_analytics.run:run",
        ]
    },
)
