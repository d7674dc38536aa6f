from setuptools import find_packages, setup

setup(
    name="airbyte-destination-heap-analytics",
    version="0.2.0",
    description="Airbyte destination that loads records into Heap Analytics through Heap's server-side APIs.",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["destination_heap_analytics", "destination_heap_analytics.*"]),
    package_data={"destination_heap_analytics": ["spec.yaml"]},
    install_requires=[
        "airbyte-cdk>=7.39,<8",
        "requests>=2.32.3",
        "pendulum>=3",
        "jsonpath-ng>=1.6",
        "orjson>=3.9",
        "xxhash>=3.4",
        "pyyaml>=6",
        # rejected records into the user's bucket (rejected.py); 1.28.57 reads AWS_ENDPOINT_URL_<SERVICE>, so an
        # S3-compatible store's own STS can be named for role_arn
        "boto3>=1.28.57",
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
