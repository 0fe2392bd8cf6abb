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
./build/keel-rootfs build --recipe minimal --busybox --agent build/keel-agent --output dir -o "$dir/rootfs" >/dev/null 2>&1
echo "\$ keelctl run --rm --rootfs $dir/rootfs -- /bin/sh -c 'echo hello from a container; echo pid \$\$ >&2; exit 3'"
./build/keelctl --addr "$addr" run --rm --rootfs "$dir/rootfs" -- /bin/sh -c 'echo hello from a container; echo pid $$ >&2; exit 3' || echo "(exit $?: the process's status)"
echo
echo "agent RSS: $(grep VmRSS /proc/$pid/status | tr -s ' \t' ' ')"
echo "\$ ./build/keelctl --addr $addr call ResizeVolume --json '{}'   # bad request: exit 1, the agent's message"
./build/keelctl --addr "$addr" call ResizeVolume --json '{}' || echo "(exit $?)"
