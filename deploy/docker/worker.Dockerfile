# A bare worker (Prefect, prefect-aws and the `flowyard` worker type, no business logic): a
# base to build a team's own flows image FROM, or a worker for flows that need nothing else.
# Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t flowyard/worker:0.1.0 .

FROM python:3.11.14-slim-bookworm AS build
RUN python -m venv /opt/flowyard
ENV PATH=/opt/flowyard/bin:$PATH
COPY deploy/docker/worker.lock /tmp/worker.lock
RUN pip install --no-cache-dir --no-deps --requirement /tmp/worker.lock && pip check
# The default pool's `flowyard` worker type lives in the flowyard package. Its worker needs
# nothing beyond Prefect, so --no-deps, after `pip check`: the platform's own dependencies
# (native-mode binaries, CLI) are deliberately not in this image.
COPY pyproject.toml README.md /flowyard/
COPY src /flowyard/src
RUN pip install --no-cache-dir --no-deps --no-build-isolation /flowyard

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
# `--with-healthcheck` serves /health here while the worker keeps polling its pool.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=12 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=5)"]
ENTRYPOINT ["flowyard-entrypoint"]
CMD ["prefect", "worker", "start", "--pool", "default", "--with-healthcheck"]
