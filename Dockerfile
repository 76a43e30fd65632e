# TAG Label Studio ML backend.
#   docker build -t tag-backend --build-arg PRESET=fast --build-arg BAKE_WEIGHTS=true .
# Multi-stage: gcc is needed only to build pydensecrf2 (no wheel on PyPI).

FROM python:3.12-slim AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt
COPY pyproject.toml README.md /src/
COPY tag_backend /src/tag_backend
COPY database_tools /src/database_tools
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /src

FROM python:3.12-slim
ARG PRESET=fast
ARG BAKE_WEIGHTS=true
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/opt/weights/hf \
    XDG_CACHE_HOME=/opt/weights \
    TAG_PRESET=${PRESET} \
    TAG_DATA_DIR=/data \
    GUNICORN_CMD_ARGS="--bind=:9090 --workers=1 --threads=4 --timeout=0 --access-logfile=-"
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
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=4)"]
# One worker + threads: models are loaded once per process. No --preload (CUDA cannot be
# re-initialised in forked workers).
# Override with GUNICORN_CMD_ARGS (e.g. more threads); keep --workers=1 unless you have the RAM.
CMD ["gunicorn", "tag_backend.wsgi:app"]
