# Hangar control plane image: web (uvicorn), worker and beat share it.
# Stage 1 builds wheels for every dependency; stage 2 installs them offline.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml ./
COPY controlplane controlplane
COPY deployments deployments
RUN pip wheel --no-cache-dir --wheel-dir /wheels . && rm /wheels/hangar-*.whl

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/app \
    HANGAR_DATA_DIR=/var/lib/hangar HANGAR_STATIC_ROOT=/app/staticfiles
RUN useradd --system --create-home --home-dir /var/lib/hangar hangar
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY manage.py ./
COPY controlplane controlplane
COPY deployments deployments
COPY telemetry telemetry
COPY templates templates
COPY static static
RUN HANGAR_DATA_DIR=/tmp/build python manage.py collectstatic --noinput -v0 && rm -rf /tmp/build
USER hangar
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["uvicorn", "controlplane.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--ws", "websockets-sansio", "--lifespan", "on", "--proxy-headers"]
