# The connector image. The base is a build argument so that machines without registry access can build on a
# locally made Python 3.11 image (see ../shared/containers.md); everywhere else the default applies.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

WORKDIR /airbyte/integration_code
COPY setup.py main.py ./
COPY destination_heap_analytics ./destination_heap_analytics
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && useradd --system --uid 1000 --home-dir /airbyte airbyte
ENV PATH="/opt/venv/bin:${PATH}" \
    AIRBYTE_ENTRYPOINT="destination-heap-analytics"
USER airbyte
ENTRYPOINT ["destination-heap-analytics"]

LABEL io.airbyte.name=airbyte/destination-heap-analytics
LABEL io.airbyte.version=0.2.0
