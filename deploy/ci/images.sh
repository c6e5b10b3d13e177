#!/usr/bin/env bash
# Third-party images for `make test-containers`: pulls each image the compose files and the
# project's Dockerfiles name; for each one that cannot be pulled (no registry reachable), uses
# a TEST STAND-IN under the same tag: deploy/ci/base.sh for the python base, and
# deploy/ci/standins.Dockerfile for postgres, redis, seaweedfs and caddy. Says which it used.
# Stand-ins stay in docker's image store, so a second run rebuilds them from cache.
#
# Usage: deploy/ci/images.sh COMPOSE_BINARY base|services
#   base      the python image the project's Dockerfiles build FROM (needed first)
#   services  postgres, redis, seaweedfs and caddy (can build while the project's images do)
set -euo pipefail
compose="${1:?usage: images.sh COMPOSE_BINARY base|services}"
which="${2:?usage: images.sh COMPOSE_BINARY base|services}"
here="$(cd "$(dirname "$0")" && pwd)"
label='{{ index .Config.Labels "org.flowyard.test-stand-in" }}'

# What the Dockerfiles build FROM, then the services' images (as in standins.yml).
base="$(sed -n 's/^FROM \(python:[^ ]*\).*/\1/p' "${here}/../docker/prefect_server.Dockerfile" | head -1)"
declare -A services=(
  [postgres]="$(sed -n 's/^    image: "\(postgres:.*\)"/\1/p' "${here}/standins.yml")"
  [redis]="$(sed -n 's/^    image: "\(redis:.*\)"/\1/p' "${here}/standins.yml")"
  [seaweedfs]="$(sed -n 's/^    image: "\(chrislusf\/seaweedfs:.*\)"/\1/p' "${here}/standins.yml")"
  [caddy]="$(sed -n 's/^    image: "\(caddy:.*\)"/\1/p' "${here}/standins.yml")"
)

# Prints "pulled", "stand-in", "local" or "missing" for one tag.
obtain() {
  local image="$1"
  if timeout 120 docker pull --quiet "${image}" >/dev/null 2>&1; then
    echo pulled
  elif ! docker image inspect "${image}" >/dev/null 2>&1; then
    echo missing
  elif [[ -n "$(docker image inspect --format "${label}" "${image}")" ]]; then
    echo stand-in
  else
    echo local
  fi
}

report() {
  case "$2" in
    pulled) echo "images: ${1}: pulled from its registry" ;;
    local) echo "images: ${1}: cannot be pulled; using the copy already in docker" ;;
    stand-in) echo "images: ${1}: cannot be pulled; using the TEST STAND-IN built earlier${3:+ (${3})}" ;;
    built) echo "images: ${1}: cannot be pulled; built a TEST STAND-IN (${3})" ;;
  esac
}

if [[ "${which}" == base ]]; then
  state="$(obtain "${base}")"
  if [[ "${state}" == missing ]]; then
    "${here}/base.sh" "${base}"
    report "${base}" built "deploy/ci/base.sh: Debian's Python 3.11"
  else
    report "${base}" "${state}"
  fi
  exit 0
fi

build=()
states=()
for service in postgres redis seaweedfs caddy; do
  image="${services[${service}]}"
  state="$(obtain "${image}")"
  case "${state}" in
    # A stand-in from an earlier run is rebuilt too (from docker's cache: seconds), so an
    # edited stand-in is never stale.
    missing | stand-in) build+=("${service}") && states+=("${state}") ;;
    *) report "${image}" "${state}" ;;
  esac
done
if ((${#build[@]})); then
  "${compose}" --progress quiet -f "${here}/standins.yml" build "${build[@]}"
  for i in "${!build[@]}"; do
    service="${build[${i}]}"
    if [[ "${states[${i}]}" == stand-in ]]; then
      report "${services[${service}]}" stand-in "refreshed from docker's build cache"
    else
      report "${services[${service}]}" built "deploy/ci/standins.Dockerfile, target ${service}"
    fi
  done
fi
