#!/usr/bin/env bash
# `make test-containers`: the compose stack users run, built and run for real.
#   1. engine.sh: Docker Engine and Compose v2 (installed if missing; a dockerd started here
#      is stopped here, one already running is used and left alone);
#   2. images.sh: the third-party and base images, or TEST STAND-INS where they cannot be
#      pulled;
#   3. tests/containers (pytest): builds the project's images from deploy/docker/*.Dockerfile,
#      `up --wait` on free ports, the end-to-end checks, then `down -v`.
# Usage: deploy/ci/test-containers.sh [PYTEST_ARGS...]   (from the repository root, after
# `make install`; STATE_DIR defaults to .venv/containers)
set -euo pipefail
cd "$(dirname "$0")/../.."
state="${STATE_DIR:-.venv/containers}"
started=$(date +%s)

deploy/ci/engine.sh start "${state}"
trap 'deploy/ci/engine.sh stop "${state}"' EXIT
compose="$(pwd)/${state}/compose/compose/docker-compose"

deploy/ci/images.sh "${compose}"
echo "images: ready after $(($(date +%s) - started)) s"

FLOWYARD_CONTAINER_TESTS=1 FLOWYARD_COMPOSE="${compose}" \
  .venv/bin/pytest tests/containers -p no:cacheprovider -v "$@"
echo "test-containers: $(($(date +%s) - started)) s in all"
