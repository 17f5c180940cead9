# Conveyor: one image for the scheduler and the worker; the command picks the role.
#
#   docker run conveyor:local scheduler --metrics-port 9100
#   docker run --group-add "$(stat -c %g /var/run/docker.sock)" \
#       -v /var/run/docker.sock:/var/run/docker.sock \
#       conveyor:local worker --queues high,default,low --metrics-port 9101
#
# The worker starts each step as a sibling container through the host's Docker socket.
# It runs as the unprivileged user `conveyor` (uid 10001) and reaches the socket through
# the socket's group: pass that group's id with --group-add (Kubernetes:
# securityContext.supplementalGroups). Never run it as root to get at the socket.
#
# Without a registry (this machine), build with scripts/build-project-image.sh: it makes a
# local Debian bookworm base image and passes it as BASE_IMAGE.
#
# Legacy builder compatible (no BuildKit-only syntax): no `# syntax=` line, no heredocs,
# no cache mounts.

ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------
# builder: a wheel of the project, then a self-contained venv in /opt/conveyor.
# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ENV PIP_DEFAULT_TIMEOUT=20 \
    PIP_RETRIES=10 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Dependencies first, read from pyproject.toml alone, so that a change in the code
# reuses this (slow, networked) layer. /opt/build holds the build backend only and is
# not copied into the final image.
COPY pyproject.toml ./
RUN python3 -m venv /opt/conveyor \
 && python3 -m venv /opt/build \
 && python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
print("\n".join(p["project"].get("dependencies", [])))' > /tmp/requirements.txt \
 && python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
print("\n".join(p.get("build-system", {}).get("requires", ["setuptools>=68"]) + ["wheel"]))' \
    > /tmp/build-requirements.txt
RUN /opt/build/bin/pip install -r /tmp/build-requirements.txt \
 && /opt/conveyor/bin/pip install -r /tmp/requirements.txt

# The project itself: build a wheel offline (backend already in /opt/build), install it
# without touching its (already installed) dependencies. pip compiles the .pyc files here:
# the final root filesystem is read-only, so nothing is compiled at run time.
COPY . .
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
 && /opt/conveyor/bin/pip install --no-deps /tmp/wheels/*.whl \
 && /opt/conveyor/bin/pip check \
 && /opt/conveyor/bin/python -m pip uninstall -y pip

# ---------------------------------------------------------------------------------------
# final: the base image + the venv, run as uid 10001.
# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

RUN groupadd --system --gid 10001 conveyor \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/conveyor --create-home \
        --shell /usr/sbin/nologin conveyor

COPY --from=builder /opt/conveyor /opt/conveyor

ENV PATH=/opt/conveyor/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/conveyor

USER 10001:10001
WORKDIR /home/conveyor

# Scheduler and worker metrics (ctl scheduler --metrics-port 9100, ctl worker --metrics-port 9101).
EXPOSE 9100 9101

ENTRYPOINT ["ctl"]
CMD ["worker"]

# Labels last: a new commit changes only this layer.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG GIT_COMMIT=unknown
ARG INPUTS_HASH=unknown
LABEL org.opencontainers.image.title="conveyor" \
      org.opencontainers.image.description="Container-only workflow scheduler: YAML DAGs of containers, Redis state, RQ workers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.conveyor.inputs-hash="${INPUTS_HASH}"
