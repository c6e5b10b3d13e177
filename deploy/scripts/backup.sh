#!/usr/bin/env bash

### Back up a running Flowyard platform: every database (pg_dump), every bucket's objects,
### flowyard.toml and secrets.toml (modes kept), Caddy's CA, and a manifest of checksums.
###
### Usage:
###     $ deploy/scripts/backup.sh [--to DIR] [--home HOME]
###
### Options are passed to `flowyard backup`; the default destination is
### $FLOWYARD_HOME/backups/<UTC timestamp>/ (mode 0700: it holds every secret).
### FLOWYARD_BIN selects the flowyard executable (default: the repo's .venv, else PATH).
###
### Examples:
###     $ deploy/scripts/backup.sh
###     $ FLOWYARD_HOME=/var/lib/flowyard deploy/scripts/backup.sh --to "/mnt/nas/flowyard-$(date +%F)"

set -euo pipefail

usage() {
    sed -n 's/^### \{0,1\}//p' "$0"
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi

# shellcheck source=deploy/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
flowyard="$(find_flowyard)"

# umask 077: anything created around the backup is owner-only too.
umask 077
exec "${flowyard}" backup "$@"
