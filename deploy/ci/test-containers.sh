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

deploy/ci/images.sh "${compose}" base
# The services' images (or stand-ins) build while the project's images do: 2 cores, and both
# mostly wait on downloads. Building needs no secret, but compose interpolates the whole file.
deploy/ci/images.sh "${compose}" services >"${state}/images.log" 2>&1 &
services=$!
placeholders="$(mktemp)"
sed 's/=$/=unused-at-build-time/' deploy/compose/.env.example >"${placeholders}"
# One service per image: Compose would otherwise export flowyard/server once per service.
mapfile -t builds < <(.venv/bin/python - <<'PY'
import yaml
services = yaml.safe_load(open("deploy/compose/docker-compose.dev_server.yml"))["services"]
print("\n".join({s["image"]: n for n, s in services.items() if "build" in s}.values()))
PY
)
echo "images: building the project's images (${builds[*]}; log: ${state}/build.log)"
status=0
"${compose}" -p flowyard-ci --env-file "${placeholders}" \
  -f deploy/compose/docker-compose.dev_server.yml --progress plain build "${builds[@]}" \
  >"${state}/build.log" 2>&1 || status=$?
rm -f "${placeholders}"
wait "${services}" || { cat "${state}/images.log"; exit 1; }
grep '^images:' "${state}/images.log"
if ((status)); then
  tail -60 "${state}/build.log"
  echo "images: building the project's images failed" >&2
  exit 1
fi
echo "images: ready after $(($(date +%s) - started)) s"

FLOWYARD_CONTAINER_TESTS=1 FLOWYARD_COMPOSE="${compose}" \
  .venv/bin/pytest tests/containers -p no:cacheprovider -v -s "$@"
echo "test-containers: $(($(date +%s) - started)) s in all"
