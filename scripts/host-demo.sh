#!/bin/sh
# Host-mode demo: runs build/keel-agent as a plain process on a Unix socket
# and drives it with build/keelctl, printing each step.
set -eu
cd "$(dirname "$0")/.."
dir=$(mktemp -d /tmp/keel-demo.XXXXXX)
addr="unix://$dir/agent.sock"
./build/keel-agent --addr "$addr" 2>"$dir/agent.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT INT TERM
run() { echo "\$ $*"; "$@"; echo; }
echo "keel-agent $(./build/keel-agent --version | cut -d' ' -f2-) pid $pid on $addr"
echo "binary: $(stat -c %s build/keel-agent) bytes, $(file -b build/keel-agent | cut -d, -f1,5)"
run ./build/keelctl --addr "$addr" health
run ./build/keelctl --addr "$addr" version
run ./build/keelctl --addr "$addr" guest-details
echo "agent RSS: $(grep VmRSS /proc/$pid/status | tr -s ' \t' ' ')"
echo "\$ ./build/keelctl --addr $addr call ResizeVolume --json '{}'   # not implemented: exit 1"
./build/keelctl --addr "$addr" call ResizeVolume --json '{}' || echo "(exit $?)"
