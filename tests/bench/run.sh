#!/bin/sh
# make bench: runs every Go benchmark of the tree once per count and prints
# each result as a ratio against its baseline from the same run (these
# machines are noisy; absolute numbers mean little). The raw output, in
# benchstat format, is kept in build/bench.txt. go test runs with -v so
# that a skipped benchmark prints its reason, which tests/bench/ratio
# repeats beside each figure it leaves "not run".
#
# KEEL_BENCH_VM=1 adds the VM tier (make bench-vm; BENCH_HOST=0 leaves the
# host tier out): the tests/bench packages whose benchmarks boot guests
# under QEMU TCG (guestbench, vmbench) run in a second pass, guestbench with
# a fixed iteration count, BENCH_VM_TIME (default 3x): a TCG op takes
# seconds, so -benchtime 1s would time one op.
set -eu
cd "$(dirname "$0")/../.."
mkdir -p build
count=${BENCH_COUNT:-3}
export KEEL_AGENT_BIN="$PWD/build/keel-agent" KEELCTL_BIN="$PWD/build/keelctl"
: >build/bench.txt
if [ "${BENCH_HOST:-1}" = 1 ]; then
	KEEL_BENCH_VM= go test -v -run '^$' -bench "${BENCH:-.}" -benchmem -count "$count" -timeout 60m ./... | tee build/bench.txt
fi
if [ "${KEEL_BENCH_VM:-}" = 1 ]; then
	for pkg in $(go list ./tests/bench/... | grep -E '/(guestbench|vmbench)$'); do
		# guestbench shares one guest across fast ops: a fixed count of
		# them; vmbench boots a guest per op: go test's default.
		time=1s
		case $pkg in */guestbench) time=${BENCH_VM_TIME:-3x} ;; esac
		go test -v -run '^$' -bench "${BENCH:-.}" -benchtime "$time" -count "$count" -timeout 60m "$pkg" | tee -a build/bench.txt
	done
fi
go run ./tests/bench/ratio < build/bench.txt
