# CPU image of the leukaemia cell classification service.
#
#   docker build --network=host -t leukaemia-cell-service:cpu .
#
# Base: the official Python image, pinned by version. Offline / air-gapped, build a stand-in
# under the same name first: docker/build-base-image.sh (Debian packages only).
# On a machine that can pull it, pin the digest too: --build-arg BASE_IMAGE=python:...@sha256:...
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

# ---- lock check: docker/requirements-cpu.lock must match pyproject.toml's pins ----
# The lock pins every package, transitive ones too. If it no longer matches pyproject.toml
# the build fails here (fix: `make docker-lock`).
FROM ${BASE_IMAGE} AS lock-check
WORKDIR /build
COPY pyproject.toml docker/runtime_requirements.py docker/requirements-cpu.lock ./
RUN python3 runtime_requirements.py pyproject.toml \
        --lock requirements-cpu.lock > lock-checked.txt

# ---- builder: a virtual environment with exactly the locked packages ----
FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Only the lock decides this layer: other edits to pyproject.toml keep the cached venv.
COPY docker/requirements-cpu.lock /build/requirements.lock
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-deps --requirement /build/requirements.lock \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --yes pip setuptools \
    # C++ headers and libclang only serve building custom ops; never used when serving (~350 MB).
    && rm -rf /opt/venv/lib/python3.11/site-packages/tensorflow/include \
              /opt/venv/lib/python3.11/site-packages/clang/native
# Depend on the lock check, so every builder (BuildKit skips unused stages) runs it.
COPY --from=lock-check /build/lock-checked.txt /build/lock-checked.txt

# ---- runtime: slim base + venv + code + the committed model store, as a non-root user ----
FROM ${BASE_IMAGE} AS runtime
# Fixed numeric ids, so the host (and a mounted model store's permissions) can rely on them.
RUN groupadd --system --gid 10001 leuk \
    && useradd --system --uid 10001 --gid leuk --home-dir /srv --no-create-home \
       --shell /usr/sbin/nologin leuk
COPY --from=builder /opt/venv /opt/venv
WORKDIR /srv
COPY docker/entrypoint.py docker/healthcheck.py /srv/docker/
COPY app /srv/app
# the model card contract the service reads (contract/card.py; no TensorFlow)
COPY contract /srv/contract
# The default model store is baked in; mount another over /srv/model_store (read-only) to
# serve other models without rebuilding.
COPY model_store /srv/model_store
RUN /opt/venv/bin/python -m compileall -q /srv/app /srv/contract /srv/docker \
    # The audit trail's SQLite database (LEUK_DATA_DIR): keep it on a volume.
    && mkdir -p /srv/data && chown 10001:10001 /srv/data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/srv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    KERAS_HOME=/tmp/.keras \
    LEUK_MODEL_STORE=/srv/model_store \
    LEUK_DATA_DIR=/srv/data \
    LEUK_HOST=0.0.0.0 \
    LEUK_PORT=8000
VOLUME ["/srv/data"]
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/srv/docker/healthcheck.py"]
ENTRYPOINT ["python", "/srv/docker/entrypoint.py"]
