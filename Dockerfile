# syntax=docker/dockerfile:1
# pyxia's container image: `pyxia` is the entry point, run as a non-root user (uid 10001).
#
#   docker build -t pyxia .
#   docker run -p 6648:6648 -p 8080:8080 pyxia                   # pyxia standalone
#   docker run pyxia server --cluster-secret-file /etc/pyxia/cluster.secret ...
#   docker run pyxia coordinator --cluster-config /etc/pyxia/cluster.yaml ...
#
# Ports (document what you publish; docs/deployment.md):
#   6648  public: Oxia's client API, the timestamp oracle, gRPC health (data servers)
#   6649  internal: replication and coordination (data servers); the coordinator's port
#         (coordination, `pyxia admin`)
#   6651  the coordinator's admin port: Oxia's admin API (`oxia admin`, `pyxia admin`)
#   8080  Prometheus metrics at /metrics (every process)
#
# Stages: `build` compiles the wheel (Rust + maturin); `runtime` installs it with every
# metadata provider (pyxia[all]) into a venv on a slim Python image. WHEEL_STAGE=prebuilt
# takes a wheel already built into dist/ (scripts/build-wheels.sh) instead of compiling one:
#   docker build --build-arg WHEEL_STAGE=prebuilt -t pyxia .
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG RUST_IMAGE=rust:1.90-slim-bookworm
ARG WHEEL_STAGE=build

FROM ${RUST_IMAGE} AS build
# Unpinned on purpose: a throwaway build stage, and pinned Debian versions leave the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/maturin && /opt/maturin/bin/pip install --no-cache-dir 'maturin>=1.9,<2'
WORKDIR /src
COPY Cargo.toml Cargo.lock pyproject.toml README.md LICENSE ./
COPY rust ./rust
COPY python ./python
RUN /opt/maturin/bin/maturin build --release --locked --strip --compatibility linux --out /dist

FROM scratch AS prebuilt
COPY dist/*.whl /dist/

# hadolint ignore=DL3006
FROM ${WHEEL_STAGE} AS wheel

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pyxia" \
      org.opencontainers.image.description="A sharded, replicated metadata store speaking Oxia's protocol" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
ENV PATH=/opt/pyxia/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
SHELL ["/bin/sh", "-eu", "-c"]
RUN --mount=type=bind,from=wheel,source=/dist,target=/dist \
    python3 -m venv /opt/pyxia \
    && set -- /dist/pyxia-*.whl && wheel="$1" \
    && /opt/pyxia/bin/pip install --no-cache-dir --disable-pip-version-check "${wheel}[all]" \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/pyxia --create-home pyxia
USER 10001:10001
WORKDIR /var/lib/pyxia
EXPOSE 6648 6649 6651 8080
ENTRYPOINT ["pyxia"]
CMD ["standalone", "--data-dir", "/var/lib/pyxia/data", "--wal-dir", "/var/lib/pyxia/wal"]
