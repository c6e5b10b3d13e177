# Flowyard's platform image: the Prefect API and background services, MLflow, and the
# compose init jobs (`flowyard render compose` wires them). Python packages come only from
# server.lock (regenerate with deploy/docker/lock.sh). Build from the repository root:
#   docker build -f deploy/docker/prefect_server.Dockerfile -t flowyard/server:0.1.0 .

FROM python:3.11.14-slim-bookworm AS build
RUN python -m venv /opt/flowyard
ENV PATH=/opt/flowyard/bin:$PATH
COPY deploy/docker/server.lock /tmp/server.lock
# --no-deps: the lock is the whole dependency set, and `pip check` proves it is consistent.
RUN pip install --no-cache-dir --no-deps --requirement /tmp/server.lock && pip check
COPY pyproject.toml README.md /src/
COPY src /src/src
# The build backend (hatchling) is in the lock too, so nothing unpinned is fetched here.
RUN pip install --no-cache-dir --no-deps --no-build-isolation /src

FROM python:3.11.14-slim-bookworm
ENV PATH=/opt/flowyard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FLOWYARD_HOME=/var/lib/flowyard
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/flowyard \
        --shell /usr/sbin/nologin flowyard
COPY --from=build /opt/flowyard /opt/flowyard
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/flowyard-entrypoint
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/flowyard
EXPOSE 4200 5000
# Prefect's image has no curl; neither has this one. Compose sets each service's own check.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=12 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4200/api/health', timeout=5)"]
ENTRYPOINT ["flowyard-entrypoint"]
CMD ["prefect", "server", "start", "--no-services", "--host", "0.0.0.0", "--port", "4200"]
