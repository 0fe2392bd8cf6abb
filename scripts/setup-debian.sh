#!/bin/sh
# Installs what Keel needs on a fresh Debian 12 machine (run as root).
# Go 1.26 is expected at /usr/local/go (or on PATH).
set -eu
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2046
apt-get install -y -q --no-install-recommends $(grep -v '^#' apt-packages.txt)
mkdir -p /var/cache/keel
command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] || { echo "setup: Go 1.26 not found (install it at /usr/local/go)" >&2; exit 1; }
echo "setup: done"
