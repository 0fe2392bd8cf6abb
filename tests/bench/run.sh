#!/bin/sh
# make bench: runs every Go benchmark of the tree once per count and prints
# each result as a ratio against its baseline from the same run (these
# machines are noisy; absolute numbers mean little). The raw output, in
# benchstat format, is kept in build/bench.txt.
set -eu
cd "$(dirname "$0")/../.."
mkdir -p build
count=${BENCH_COUNT:-3}
KEEL_AGENT_BIN=$PWD/build/keel-agent KEELCTL_BIN=$PWD/build/keelctl \
	go test -run '^$' -bench "${BENCH:-.}" -benchmem -count "$count" -timeout 60m ./... | tee build/bench.txt
go run ./tests/bench/ratio < build/bench.txt
