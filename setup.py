from setuptools import find_packages, setup

setup(
    name="airbyte-destination-heap-analytics",
    version="0.2.0",
    description="Airbyte destination that loads records into Heap Analytics through Heap's server-side APIs.",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["destination_heap_analytics", "destination_heap_analytics.*"]),
    package_data={"destination_heap_analytics": ["spec.yaml"]},
    # Each lower bound is a release, and the lowest versions together run a write
    # (integration_tests/test_lowest_dependencies.py installs exactly them).
    install_requires=[
        "airbyte-cdk>=7.39.0,<8",
        "requests>=2.32.3",
        "urllib3>=2.6.3,<3",  # HTTPResponse.read1 (2.0) and Retry(retry_after_max=...) (2.6.3)
        "pendulum>=3.0.0",
        "jsonpath-ng>=1.6.0",
        "orjson>=3.10.7",  # airbyte-cdk 7.39's own lower bound
        "xxhash>=3.4.1",
        "pyyaml>=6.0.1",  # airbyte-cdk 7.39's own lower bound
        # rejected records into the user's bucket (rejected.py): 1.34.63 is the first whose botocore takes urllib3 2.x
        # past 2.1 (earlier ones cannot install beside urllib3 2.6.3)
        "boto3>=1.34.63",
    ],
    extras_require={
        "tests": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "ruff>=0.5",
            "jsonschema>=4",
            # the protocol's own models, with DestinationCatalog (discover's answer): tests validate against them
            "airbyte-protocol-models-dataclasses>=0.17.1",
            # a real S3-compatible server on 127.0.0.1 for the rejected-records tests (integration_tests/bucket.py)
            "moto[server]>=5",
        ],
    },
    entry_points={
        "console_scripts": [
            "destination-heap-analytics=destination_heap_analytics.run:run",
        ]
    },
)
