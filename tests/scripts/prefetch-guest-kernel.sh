#!/bin/sh
# prefetch-guest-kernel.sh: fill the guest kernel cache
# (/var/cache/keel/debian-kernel, or $KEEL_KERNEL_CACHE) before a parallel
# `go test ./...`, so VM tests do not all wait on the first download.
# Needs apt-get, dpkg-deb and xz (Debian 12 base) and network to the mirror.
set -eu
cd "$(dirname "$0")/../.."
exec go test -count=1 -run '^TestEnsureDebianKernel$' ./tests/vmm/guestkernel
