# The connector image. The base is a build argument so that machines without registry access can build on a
# locally made Python 3.11 image (see ../shared/containers.md); everywhere else the default applies.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

WORKDIR /airbyte/integration_code
RUN python3 -m venv /opt/venv \
    && useradd --system --uid 1000 --home-dir /airbyte airbyte

# Dependencies in a layer of their own (from setup.py alone, with an empty package in place of the code), so
# that a change to the connector's code does not download and reinstall them.
COPY setup.py ./
RUN mkdir destination_heap_analytics \
    && touch destination_heap_analytics/__init__.py \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/pip uninstall --yes destination-heap-analytics \
    && rm -rf destination_heap_analytics build ./*.egg-info

COPY main.py ./
COPY destination_heap_analytics ./destination_heap_analytics
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info \
    && /opt/venv/bin/destination-heap-analytics spec > /dev/null

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    AIRBYTE_ENTRYPOINT="destination-heap-analytics"
USER airbyte
ENTRYPOINT ["destination-heap-analytics"]

LABEL io.airbyte.name=airbyte/destination-heap-analytics
LABEL io.airbyte.version=0.2.0
