# The connector image. The base is a build argument so that machines without registry access can build on a
# locally made Python 3.11 image (see ../shared/containers.md); everywhere else the default applies.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Build stage: the venv, with the mapping compiled by mypyc. The C compiler and Python's headers it needs stay
# in this stage, out of the image that runs.
FROM ${BASE_IMAGE} AS build
# python3-dev only where the base lacks Python.h (Debian's python3 does; the python:3.11 images have it)
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev $(python3 -c 'import os, sysconfig; \
        print("" if os.path.exists(sysconfig.get_paths()["include"] + "/Python.h") else "python3-dev")') \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
RUN python3 -m venv /opt/venv

# Dependencies in a layer of their own (from setup.py alone, with an empty package in place of the code), so
# that a change to the connector's code does not download and reinstall them.
COPY setup.py ./
RUN mkdir destination_heap_analytics \
    && touch destination_heap_analytics/__init__.py \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/pip uninstall --yes destination-heap-analytics \
    && rm -rf destination_heap_analytics build ./*.egg-info

COPY pyproject.toml build_backend.py ./
COPY destination_heap_analytics ./destination_heap_analytics
# -P: the check must import the installed module, not the source tree in the working directory
RUN DESTINATION_HEAP_COMPILE=1 /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/python -P -c 'import destination_heap_analytics.mapping as m; \
        assert m.__file__.endswith(".so"), m.__file__'

FROM ${BASE_IMAGE}
RUN useradd --system --uid 1000 --home-dir /airbyte airbyte
COPY --from=build /opt/venv /opt/venv
WORKDIR /airbyte/integration_code
COPY main.py ./
RUN /opt/venv/bin/destination-heap-analytics spec > /dev/null

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    AIRBYTE_ENTRYPOINT="destination-heap-analytics"
USER airbyte
ENTRYPOINT ["destination-heap-analytics"]

LABEL io.airbyte.name=airbyte/destination-heap-analytics
LABEL io.airbyte.version=0.2.0
