# brachy-cds: the CDS Hooks service in a small image, run by a non-root user with the production
# server (gunicorn, `brachy-cds serve --workers`). README "Try it with a sandbox FHIR server" and
# docker-compose.yml use it; every BRACHY_CDS_* setting is read from the environment at start.

# Build stage: make a wheel of the project (and of nothing else), so the final image needs no build tools.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
COPY fhir_mappings ./fhir_mappings
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Final stage: the wheel and its dependencies, no compiler, no source tree.
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /app --create-home brachy \
    && mkdir -p /app/var \
    && chown brachy:brachy /app/var
WORKDIR /app
USER 10001:10001
# The SQLite store (feedback, JWT replay) lives in /app/var unless BRACHY_CDS_DATABASE_URL says otherwise.
VOLUME ["/app/var"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["brachy-cds"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "2"]
