#!/usr/bin/env bash
# The UI test's browser (tests/integration/test_access.py::test_ui_viewer_sees_runs_operator_runs):
# Debian's `chromium`, driven by Playwright's client without Playwright's own browser download
# (nothing but PyPI, npm and Debian's archive can be reached from CI). Installed when missing
# and root (CI runs as root); otherwise says how, and the test skips outside CI (CI=true makes
# a missing browser a failure, so the UI test cannot silently drop out of CI).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "chromium: not installed; the UI test needs it: sudo apt-get install -y chromium" >&2
  exit 0
fi
echo "chromium: installing Debian's chromium for the UI test"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
chromium --version
