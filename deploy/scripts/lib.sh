# shellcheck shell=bash
# Sourced by backup.sh and restore.sh (not run on its own): which flowyard executable to call.

# Prints the flowyard executable: $FLOWYARD_BIN, else the repo's .venv, else PATH; exits 1
# with the fix when there is none.
find_flowyard() {
    local repo_root
    repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    if [[ -n "${FLOWYARD_BIN:-}" ]]; then
        echo "${FLOWYARD_BIN}"
    elif [[ -x "${repo_root}/.venv/bin/flowyard" ]]; then
        echo "${repo_root}/.venv/bin/flowyard"
    elif command -v flowyard; then
        :
    else
        echo "flowyard is not installed (make install, or set FLOWYARD_BIN)." >&2
        exit 1
    fi
}
