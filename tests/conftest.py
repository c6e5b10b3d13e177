"""Collection rules shared by every test directory."""

import os

# tests/containers builds images and runs the compose stack (minutes, a Docker engine):
# `make test-containers` runs it (deploy/ci/test-containers.sh sets the variable); plain
# `pytest` and `make test` leave it out.
collect_ignore = [] if os.environ.get("FLOWYARD_CONTAINER_TESTS") else ["containers"]
