#!/usr/bin/env bash

### Restore a Flowyard backup into a fresh FLOWYARD_HOME, then start the platform.
###
### The whole backup is verified first (checksums, completeness, versions, free ports); a
### damaged or incomplete backup is refused, with the reason, before anything is changed.
###
### Usage:
###     $ deploy/scripts/restore.sh BACKUP_DIR [--home HOME] [--force] [--check] [--verify] [--no-up]
###
### BACKUP_DIR   a directory written by `flowyard backup` (it has manifest.json)
### --home       where to restore (default: $FLOWYARD_HOME, else ~/.flowyard; /var/lib/flowyard as root)
### --force      replace a non-empty home's config, secrets and data (logs/ and backups/ are kept)
### --check      only verify the backup and the target, change nothing
### --verify     after restoring, start the restored platform, check every deployment's code,
###              run a check flow to Completed, and stop it, before reporting success
### --no-up      restore, but do not run `flowyard up` afterwards
### FLOWYARD_BIN selects the flowyard executable (default: the repo's .venv, else PATH).
###
### Examples:
###     $ deploy/scripts/restore.sh /mnt/nas/flowyard-2026-01-31 --check
###     $ deploy/scripts/restore.sh /mnt/nas/flowyard-2026-01-31 --home /var/lib/flowyard
###     $ deploy/scripts/restore.sh /mnt/nas/flowyard-2026-01-31 --home /var/lib/flowyard --verify

set -euo pipefail

usage() {
    sed -n 's/^### \{0,1\}//p' "$0"
}

if [[ $# -lt 1 || "${1}" == "-h" || "${1}" == "--help" ]]; then
    usage
    [[ $# -ge 1 ]] && exit 0 || exit 2
fi

# shellcheck source=deploy/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
flowyard="$(find_flowyard)"

backup="${1}"
shift
start=1
check=0
home_args=()
restore_args=()
while [[ $# -gt 0 ]]; do
    case "${1}" in
        --no-up) start=0 ;;
        --check) check=1; restore_args+=("${1}") ;;
        --home) home_args=(--home "${2:?--home needs a directory}"); shift ;;
        --home=*) home_args=(--home "${1#--home=}") ;;
        *) restore_args+=("${1}") ;;
    esac
    shift
done

"${flowyard}" restore "${backup}" ${home_args[@]+"${home_args[@]}"} ${restore_args[@]+"${restore_args[@]}"}
if [[ "${check}" -eq 0 && "${start}" -eq 1 ]]; then
    exec "${flowyard}" up ${home_args[@]+"${home_args[@]}"}
fi
