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
exec "$@"
