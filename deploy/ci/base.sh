#!/usr/bin/env bash
# TEST STAND-IN, for CI machines that cannot reach Docker Hub; never for users.
#
# Builds a local image tagged as the official `python:3.11.14-slim-bookworm` that the
# project's Dockerfiles start FROM, out of Debian packages (mmdebstrap + docker import):
# Debian bookworm's Python 3.11 with venv/pip, `python` on PATH as in the official image,
# and this machine's CA certificates, so that pip inside the builds trusts the same package
# index (or egress proxy) the host does. The image is labelled as a stand-in.
#
# Usage: deploy/ci/base.sh IMAGE_TAG
set -euo pipefail
tag="${1:?usage: base.sh IMAGE_TAG}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

if ! command -v mmdebstrap >/dev/null 2>&1; then
  echo "base: installing Debian's mmdebstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
mmdebstrap --quiet --variant=minbase \
  --include=python3,python3-venv,python-is-python3,ca-certificates,passwd \
  --customize-hook='cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  bookworm "${work}/rootfs.tar" \
  "deb ${mirror} bookworm main" \
  "deb ${mirror} bookworm-updates main" \
  "deb ${security} bookworm-security main" </dev/null

docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'LABEL org.flowyard.test-stand-in="python:3.11 slim from Debian packages"' \
  --change 'CMD ["python3"]' \
  "${work}/rootfs.tar" "${tag}" >/dev/null
echo "built stand-in ${tag} ($(docker run --rm "${tag}" python --version))"
