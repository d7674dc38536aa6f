# The connector image. Airbyte's Python connectors build on its python-connector-base (Python 3.11), pinned by
# digest. The base is a build argument so that a machine without access to an image registry can build on a
# locally made Python 3.11 image with pip and venv.
ARG BASE_IMAGE=docker.io/airbyte/python-connector-base:4.0.2@sha256:9fdb1888c4264cf6fee473649ecb593f56f58e5d0096a87ee0b231777e2e3e73
FROM ${BASE_IMAGE}

WORKDIR /airbyte/integration_code
RUN python3 -m venv /opt/venv
# Dependencies in a layer of their own (from setup.py alone, with an empty package in place of the code), so
# that a change to the connector's code does not download and reinstall them.
COPY setup.py pyproject.toml ./
RUN mkdir destination_heap_analytics \
    && touch destination_heap_analytics/__init__.py \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/pip uninstall --yes airbyte-destination-heap-analytics \
    && rm -rf destination_heap_analytics build ./*.egg-info
COPY destination_heap_analytics ./destination_heap_analytics
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info destination_heap_analytics \
    && /opt/venv/bin/destination-heap-analytics spec > /dev/null

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    AIRBYTE_ENTRYPOINT="destination-heap-analytics"
RUN id airbyte >/dev/null 2>&1 || useradd --system --uid 1000 --home-dir /airbyte airbyte
USER airbyte
ENTRYPOINT ["destination-heap-analytics"]

LABEL io.airbyte.name=airbyte/destination-heap-analytics
LABEL io.airbyte.version=0.2.0
