# Hangar control plane image: web (uvicorn), worker and beat share it.
# Stage 1 installs every dependency into a virtualenv; stage 2 copies it and the
# source. BASE is any Debian-like image with python3 (3.11) and its venv module:
# the official python:3.11-slim by default, or the offline hangar/python-base
# (scripts/images.sh controlplane), which also puts pre-downloaded wheels in
# offline-wheels/ and passes PIP_INDEX_OPTIONS=--no-index.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG PIP_INDEX_OPTIONS=""
WORKDIR /src
COPY offline-wheels/ /wheels/
COPY pyproject.toml ./
COPY controlplane controlplane
COPY deployments deployments
COPY telemetry telemetry
COPY gateway gateway
COPY rollouts rollouts
COPY threads threads
COPY edge edge
COPY edge_agent edge_agent
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --disable-pip-version-check --no-cache-dir \
      ${PIP_INDEX_OPTIONS} --find-links /wheels . \
 && /opt/venv/bin/pip uninstall --disable-pip-version-check -y -q hangar \
 && /opt/venv/bin/python -c "import django, channels, celery, psycopg, uvicorn"

FROM ${BASE}
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/app \
    HANGAR_DATA_DIR=/var/lib/hangar HANGAR_STATIC_ROOT=/app/staticfiles
RUN useradd --system --create-home --home-dir /var/lib/hangar hangar
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY manage.py ./
COPY controlplane controlplane
COPY deployments deployments
COPY telemetry telemetry
COPY gateway gateway
COPY rollouts rollouts
COPY threads threads
COPY edge edge
COPY templates templates
COPY static static
RUN HANGAR_DATA_DIR=/tmp/build python manage.py collectstatic --noinput -v0 && rm -rf /tmp/build
USER hangar
EXPOSE 8000
# HANGAR_HEALTHCHECK_PORT: where the probe looks when the web server is given another --port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HANGAR_HEALTHCHECK_PORT', '8000'), timeout=4)"]
CMD ["uvicorn", "controlplane.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--ws", "websockets-sansio", "--lifespan", "on", "--proxy-headers", "--timeout-graceful-shutdown", "5"]
