#!/usr/bin/env bash
# Make sure headless Chromium and chromedriver are installed for the browser test
# (tests/test_browser.py). A no-op when both are present or when FLATBOOK_SKIP_BROWSER=1.
# Otherwise installs Debian's `chromium` and `chromium-driver` with apt-get (root only;
# about 40 s and 480 MB). Exits 1 with a message when it cannot: the browser test then fails
# with the same hint, unless FLATBOOK_SKIP_BROWSER=1 is set.
set -euo pipefail

if [ "${FLATBOOK_SKIP_BROWSER:-}" = "1" ]; then
  echo "[chromium] FLATBOOK_SKIP_BROWSER=1: not checking for Chromium (browser test skipped)"
  exit 0
fi

have() { command -v "$1" >/dev/null 2>&1; }
found() {
  local b
  for b in "${FLATBOOK_CHROMIUM:-}" chromium chromium-browser google-chrome google-chrome-stable; do
    [ -n "$b" ] && have "$b" && { have "${FLATBOOK_CHROMEDRIVER:-chromedriver}" && return 0; }
  done
  return 1
}

if found; then
  exit 0
fi
hint="install them with: apt-get install -y chromium chromium-driver (as root), or set FLATBOOK_SKIP_BROWSER=1 to skip the browser test"
if [ "$(id -u)" -ne 0 ]; then
  echo "[chromium] error: chromium/chromedriver missing and not running as root; $hint" >&2
  exit 1
fi
if ! have apt-get; then
  echo "[chromium] error: chromium/chromedriver missing and apt-get not available; $hint" >&2
  exit 1
fi
echo "[chromium] installing Debian packages chromium + chromium-driver (about 40 s)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
  echo "[chromium] error: apt-get could not install chromium chromium-driver; $hint" >&2
  exit 1
fi
if ! found; then
  echo "[chromium] error: chromium/chromedriver still not found on PATH after apt-get; $hint" >&2
  exit 1
fi
echo "[chromium] installed: $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"
