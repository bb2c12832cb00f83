# LAM's container image: `lam serve` by default; `lam worker`, `lam audit verify` and every
# other command by naming it (docker run IMAGE worker --health-port 8081).
#
# Build:  docker build -t lam:0.1.0 .
# Run:    docker run --read-only --tmpfs /tmp -v lam-home:/var/lib/lam \
#           -e SLACK_BOT_TOKEN -e SLACK_APP_TOKEN -e REDIS_URL -p 3000:3000 lam:0.1.0
#
# The process runs as uid 10001 and writes only to /tmp and LAM_HOME (/var/lib/lam), so a
# read-only root filesystem works. helm/lam deploys it on Kubernetes; docs/operations.md
# covers running it.

# Both stages use the same base image, so the virtual environment built in the first one
# finds the same Python at the same path in the second.
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Venvs are not relocatable: it is built at the path the runtime stage uses.
RUN python -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY connectors ./connectors
# pip compiles every module to bytecode here, so the runtime never needs to write any.
RUN /opt/venv/bin/pip install --no-cache-dir .


FROM python:3.11.14-slim-bookworm

ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="lam" \
      org.opencontainers.image.description="A Large Action Model for chat-ops: plans actions from requests, governs them with policy and approvals, runs them sandboxed, audits everything." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"

# bubblewrap: the shell connector's sandbox. procps: `ps` and `uptime` for the built-in
# runbooks (`prlimit` for their resource limits comes with util-linux, already in the
# base). tini: PID 1 reaps orphaned grandchildren of runbooks and forwards SIGTERM, which
# a Python PID 1 does not do for processes it did not start itself.
# Versions are not pinned: Debian's archive keeps only the current security release of a
# package, so a pinned version stops building after the next update; the pinned base image
# tag fixes the Debian release instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap procps tini \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid, so Kubernetes can check runAsNonRoot against the image and volume
# ownership (fsGroup) matches across builds.
RUN groupadd --system --gid 10001 lam \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /var/lib/lam --shell /usr/sbin/nologin lam \
    && mkdir -p /var/lib/lam \
    && chown 10001:10001 /var/lib/lam \
    && chmod 0750 /var/lib/lam

COPY --from=builder /opt/venv /opt/venv
# The sample policy, so the image starts on its own; the Helm chart mounts the
# installation's policy over this directory from a ConfigMap.
COPY policies /etc/lam/policies

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/var/lib/lam \
    LAM_HOME=/var/lib/lam \
    LAM_POLICY_DIR=/etc/lam/policies \
    LAM_LOG_FORMAT=json \
    LAM_HEALTH_PORT=3000

VOLUME ["/var/lib/lam"]
WORKDIR /var/lib/lam
USER 10001:10001

EXPOSE 3000

# /healthz answers on LAM_HEALTH_PORT: `lam serve` and `lam worker` read it as their
# --health-port (in HTTP mode serve answers on --port, 3000 by default, too). curl is not
# in the slim image; Python's standard library asks instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LAM_HEALTH_PORT', '3000') + '/healthz', timeout=4)"]

ENTRYPOINT ["tini", "--", "lam"]
CMD ["serve"]
