#!/usr/bin/env bash
# Regenerates the image lock files from their inputs. Run from the repository root with the
# dev venv (pip-tools) on Python 3.11, the images' Python; review and commit the diff.
set -euo pipefail
cd "$(dirname "$0")/../.."
compile() {
  .venv/bin/pip-compile --quiet --strip-extras --allow-unsafe --no-header \
    --no-emit-index-url --no-emit-find-links --output-file "$@"
}
compile deploy/docker/server.lock deploy/docker/server.in
compile deploy/docker/worker.lock deploy/docker/worker.in
compile deploy/docker/flows.lock flows/pyproject.toml deploy/docker/flows.in
