# node-ping-exporter container image.
#   buildah bud --build-arg BASE_IMAGE=... -t node-ping-exporter:0.1.0 .   (or docker build)
# CI builds it with scripts/build-image.sh from a debootstrap-made Debian base.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# -- build: a virtualenv with the pinned runtime dependencies and the agent ----
FROM ${BASE_IMAGE} AS build
# A CA bundle for pip when the build host reaches PyPI through a TLS proxy
# (scripts/build-image.sh mounts the host's); build stage only.
ARG PIP_CERT
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates binutils \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/node-ping-exporter
ENV PATH=/opt/node-ping-exporter/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.txt /src/requirements.txt
RUN pip install --only-binary=:all: -r /src/requirements.txt
# The agent alone: the lab is its own distribution (lab/pyproject.toml) and never
# enters the build context (.dockerignore); build-image.sh checks the result.
COPY pyproject.toml README.md /src/
COPY exporter /src/exporter
# Strip native extensions (uvloop ships 14 MB of symbols); compile the bytecode
# now, since the root filesystem is read-only at run time.
RUN pip install --no-deps /src \
 && rm -rf /opt/node-ping-exporter/lib/python3*/site-packages/pip* \
           /opt/node-ping-exporter/lib/python3*/site-packages/setuptools* \
 && find /opt/node-ping-exporter -name '*.so' -exec strip --strip-unneeded {} + \
 && find /opt/node-ping-exporter -name '__pycache__' -prune -exec rm -rf {} + \
 && python3 -m compileall -q -j 0 /opt/node-ping-exporter/lib

# -- runtime: the interpreter and the virtualenv, nothing else -----------------
FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="node-ping-exporter" \
      org.opencontainers.image.description="Per-pair ICMP loss and RTT between Kubernetes nodes, for Prometheus" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-minimal libpython3.11-stdlib ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/*
COPY --from=build /opt/node-ping-exporter /opt/node-ping-exporter
ENV PATH=/opt/node-ping-exporter/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# nobody: the chart runs it so in unprivileged mode, and as root only for raw sockets.
USER 65534:65534
EXPOSE 9798
ENTRYPOINT ["node-ping-exporter"]
