#!/bin/sh
# Entrypoint of the Flowyard images. Native mode creates a service's directories before it
# starts it (its `prepare`); compose sets the same paths in the environment, from the same
# functions, so create them here, then become the service.
set -eu
for dir in "${PREFECT_HOME:-}" "${TMPDIR:-}"; do
  if [ -n "$dir" ]; then
    mkdir -p "$dir"
  fi
done
# The access gate and the API read the logins from FLOWYARD_USERS_FILE; compose passes the
# home's users.toml base64url-encoded in FLOWYARD_USERS_B64 (docs/containers.md). Written
# owner-only (the gate refuses a file others may read), then dropped from the environment.
if [ -n "${FLOWYARD_USERS_B64:-}" ]; then
  (
    umask 077
    printf '%s' "$FLOWYARD_USERS_B64" | tr -- '-_' '+/' | base64 -d >"$FLOWYARD_USERS_FILE.tmp"
  )
  mv -f "$FLOWYARD_USERS_FILE.tmp" "$FLOWYARD_USERS_FILE"
  unset FLOWYARD_USERS_B64
fi
exec "$@"
