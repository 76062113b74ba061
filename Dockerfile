# The overhead-service image: `overhead-service serve` (gunicorn with the packaged settings) on :8080.
#
#   docker build -t <registry>/overhead-service:<tag> .      (or: make image; podman works the same)
#
# Runs as uid 10001 with a read-only root filesystem. It writes only to the three VOLUME paths
# below, which the pod mounts as emptyDirs (and, for SQLite, a PersistentVolumeClaim at the data
# directory); gunicorn's worker heartbeat goes to /dev/shm. See docs/operations.md.

ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm

# --- build: a virtual environment with the package and its dependencies (all binary wheels) ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/overhead-service
WORKDIR /src
# overhead_service/openapi.yaml is a symlink to the top-level contract, so that file comes too.
COPY pyproject.toml README.md openapi.yaml ./
COPY overhead_service ./overhead_service
# Byte-code compiled now, since the root filesystem is read-only at run time; pip itself is not
# needed there.
RUN /opt/overhead-service/bin/pip install --no-compile . \
    && /opt/overhead-service/bin/pip uninstall --yes pip setuptools \
    && /opt/overhead-service/bin/python -m compileall -q -j 0 /opt/overhead-service

# --- run: the same base, the environment copied over, nothing to build with ---------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="overhead-service" \
      org.opencontainers.image.description="Memory overhead of KubeVirt virt-launcher pods (kvm and mshv)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/overhead-service /opt/overhead-service
# The writable places, owned by the service's user for runtimes that honour the image's
# ownership (docker run); in Kubernetes they are emptyDirs/PVCs (fsGroup makes them writable).
RUN mkdir -p /run/overhead-service/metrics /var/lib/overhead-service \
    && chown 10001:10001 /run/overhead-service/metrics /var/lib/overhead-service
# PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is imported: here, not in Python.
# HOME and MPLCONFIGDIR point at /tmp because the home directory is not writable (matplotlib
# caches its font list; gunicorn's control socket is off anyway).
ENV PATH=/opt/overhead-service/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    PROMETHEUS_MULTIPROC_DIR=/run/overhead-service/metrics \
    OVERHEAD_DATABASE_URL=sqlite:////var/lib/overhead-service/overhead.db
VOLUME ["/tmp", "/run/overhead-service/metrics", "/var/lib/overhead-service"]
WORKDIR /var/lib/overhead-service
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["overhead-service", "serve"]
