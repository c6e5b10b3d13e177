#!/bin/sh
# TEST STAND-IN entrypoint (see standins.Dockerfile): the part of the official postgres
# image's docker-entrypoint.sh that compose relies on. As root it prepares PGDATA and
# re-runs itself as `postgres`; on an empty PGDATA it runs initdb with POSTGRES_USER,
# POSTGRES_PASSWORD (from a file, never argv) and POSTGRES_INITDB_ARGS, listens on every
# interface and requires scram-sha-256 from the network (local socket: trust, as upstream).
set -eu
if [ "${1:-}" != "postgres" ]; then
  exec "$@"
fi
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of arguments, as upstream
  initdb --username="${POSTGRES_USER:-postgres}" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA"
  rm -f "$pwfile"
  printf "listen_addresses = '*'\nunix_socket_directories = '/var/run/postgresql'\n" \
    >> "$PGDATA/postgresql.conf"
  printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
fi
unset POSTGRES_PASSWORD
exec "$@"
