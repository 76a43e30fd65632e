# syntax=docker/dockerfile:1
# TAG Label Studio ML backend.
#   DOCKER_BUILDKIT=1 docker build -t tag-backend --build-arg PRESET=fast --build-arg BAKE_WEIGHTS=true .
# Multi-stage: gcc is needed only to build pydensecrf2 (no wheel on PyPI).
# pip's cache is a BuildKit cache mount: rebuilding after a requirements change re-downloads
# only what changed (the torch CUDA wheels alone are ~4 GB), and the cache never enters a layer.
#
# Image size and first build time were NOT measured (no Docker engine where this was written).
# Expected from the installed packages: ~6.5 GB of Python packages (torch's CUDA build with its
# nvidia-* libraries is ~5 GB of it) + ~0.15 GB base image + baked weights (`fast` ~0.7 GB,
# `paper` ~2 GB), i.e. ~7.5 GB (`fast`) / ~9 GB (`paper`); BAKE_WEIGHTS=false saves the weights.
# First build: dominated by downloading ~3.5 GB of wheels and the weights, plus ~1 min to compile
# pydensecrf2; expect 10-20 min on a 100 Mbit/s line, a few minutes once the pip cache is warm.

FROM python:3.12-slim AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY pyproject.toml README.md /src/
COPY tag_backend /src/tag_backend
COPY database_tools /src/database_tools
RUN --mount=type=cache,target=/root/.cache/pip /opt/venv/bin/pip install --no-deps /src

FROM python:3.12-slim
ARG PRESET=fast
ARG BAKE_WEIGHTS=true
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/opt/weights/hf \
    XDG_CACHE_HOME=/opt/weights \
    TAG_PRESET=${PRESET} \
    TAG_DATA_DIR=/data
RUN useradd --create-home --uid 1000 tag \
    && mkdir -p /data /opt/weights \
    && chown tag:tag /data /opt/weights
COPY --from=build /opt/venv /opt/venv
USER 1000:1000
# Bake the preset's weights into the image (no download at run time); set
# BAKE_WEIGHTS=false to keep the image small and mount a cache instead.
RUN if [ "$BAKE_WEIGHTS" = "true" ]; then tag-backend download-weights --preset "$PRESET"; fi
WORKDIR /data
VOLUME ["/data"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; from tag_backend.config import settings_from_env; urllib.request.urlopen(f'http://127.0.0.1:{settings_from_env().port}/health', timeout=4)"]
# Sized by the settings (tag_backend/gunicorn_conf.py): TAG_PORT / TAG_WORKERS / TAG_THREADS, or
# Label Studio's PORT / WORKERS / THREADS; default one worker with 4 threads on :9090 (models are
# loaded once per process and shared by its threads). No --preload: CUDA cannot be re-initialised
# in forked workers. GUNICORN_CMD_ARGS still overrides anything.
CMD ["gunicorn", "--config", "python:tag_backend.gunicorn_conf", "tag_backend.wsgi:app"]
