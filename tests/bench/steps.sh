#!/bin/sh
# make bench-steps: the before/after table of issue 16's optimisation steps
# on the container lifecycle. For each line of tests/bench/steps.txt (a
# commit: its first parent vs it; or FROM..TO) it builds keel-agent at both
# commits like `make agent` does (with the Makefile's AGENT_TAGS and
# AGENT_LINKFLAGS, which `make bench-steps` passes), into a cache outside the
# checkout keyed by commit, Go version and build flags
# ($KEEL_CACHE/agent-steps/<commit>-<go version>-<flags hash>/keel-agent; the
# sources come from `git archive`, the work tree is not touched), and runs the paired A/B
# benchmarks of tests/bench/containerbench with A = before, B = after:
# BenchmarkAgentLifecycleAB (P1 wire: create+start+read+wait+remove) and
# BenchmarkAgentExecAB (P2 wire: exec /bin/true). Each alternates the two
# binaries per iteration, so load that drifts weighs on both; the figure is
# the median of the per-pair ratios B/A (below 1 = the step made it faster).
#
# STEPS_PAIRS pairs per run (default 30), STEPS_COUNT runs per step
# (default 3: the table gives their median and range). STEPS_FILE picks
# another list. Raw output: build/bench-steps.txt. Needs root (containers).
set -eu
cd "$(dirname "$0")/../.."
root=$PWD
# The agents built from these commits run as root on this machine (host
# mode, no VM around them): list only commits of this repository.
steps=${STEPS_FILE:-tests/bench/steps.txt}
pairs=${STEPS_PAIRS:-30}
count=${STEPS_COUNT:-3}
cache=${KEEL_CACHE:-/var/cache/keel}/agent-steps
GO=${GO:-go}
: "${AGENT_TAGS:?unset: run through make bench-steps}" "${AGENT_LINKFLAGS:?unset: run through make bench-steps}"
# A cached binary is reused only when built by the same Go with the same flags.
buildkey=$($GO env GOVERSION)-$(printf '%s\n' "$AGENT_TAGS" "$AGENT_LINKFLAGS" | sha256sum | cut -c1-12)
mkdir -p build "$cache"
work=$(mktemp -d /tmp/keel-bench-steps.XXXXXX)
trap 'rm -rf "$work"' EXIT
# Killed: exit, so the EXIT trap cleans up.
trap 'exit 143' TERM INT HUP

# agent COMMIT: the path of keel-agent built at COMMIT (cached).
agent() {
	full=$(git rev-parse --verify --quiet "$1^{commit}") || {
		echo "steps: unknown commit $1" >&2
		return 1
	}
	dir=$cache/$full-$buildkey
	out=$dir/keel-agent
	if [ ! -x "$out" ]; then
		echo "steps: building keel-agent at $(git rev-parse --short "$full")" >&2
		src=$work/src-$full
		mkdir -p "$src" "$dir"
		git archive "$full" | tar -x -C "$src"
		# Built under a private name and renamed into place: a concurrent
		# run building the same commit never sees (or execs) a half-written
		# binary. The subshell's own traps remove it on failure or kill.
		(
			tmp=$(mktemp "$dir/keel-agent.XXXXXX")
			trap 'rm -f "$tmp"' EXIT
			trap 'exit 143' TERM INT HUP
			cd "$src"
			CGO_ENABLED=1 $GO build -trimpath -tags "$AGENT_TAGS" \
				-ldflags "$AGENT_LINKFLAGS -X github.com/keelvm/keel/agent/version.Version=$(git -C "$root" rev-parse --short "$full")" \
				-o "$tmp" ./cmd/keel-agent
			chmod 755 "$tmp"
			mv -f "$tmp" "$out"
		) >&2
		rm -rf "$src"
	fi
	echo "$out"
}

# agg BENCH UNIT [range] < bench output: the median of UNIT over BENCH's
# runs ("not run" if none), with "range" also their [min-max].
agg() {
	awk -v b="$1" -v u="$2" -v r="${3:-}" '
		$1 ~ "^"b"(-[0-9]+)?$" { for (i = 3; i < NF; i++) if ($(i+1) == u) v[n++] = $i }
		END {
			if (n == 0) { print "not run"; exit }
			for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
			if (r == "") { printf "%.1f", v[int(n / 2)]; exit }
			printf "%.3f", v[int(n / 2)]
			if (n > 1) printf " [%.3f-%.3f]", v[0], v[n-1]
		}'
}

echo "steps: building the benchmark binary" >&2
$GO test -c -o "$work/containerbench.test" ./tests/bench/containerbench
: >build/bench-steps.txt
table=$work/table
{
	echo "| Step | Commit (A -> B) | P1 wire B/A | P1 ms A -> B | P2 wire B/A | P2 ms A -> B |"
	echo "|---|---|---|---|---|---|"
} >"$table"
grep -v -e '^#' -e '^[[:space:]]*$' "$steps" | while read -r commit desc; do
	case $commit in
	*..*) from=${commit%%..*} to=${commit#*..} ;;
	*) from=$commit^ to=$commit ;;
	esac
	a=$(agent "$from")
	b=$(agent "$to")
	label="$(git rev-parse --short "$from") -> $(git rev-parse --short "$to")"
	echo "steps: $label $desc" >&2
	out=$work/out
	# The package directory, as go test runs it (testdata is relative).
	(cd tests/bench/containerbench && KEEL_AGENT_BIN=$a KEEL_AGENT_BIN_B=$b "$work/containerbench.test" \
		-test.run '^$' -test.bench '^BenchmarkAgent(Lifecycle|Exec)AB$' \
		-test.benchtime "${pairs}x" -test.count "$count" -test.timeout 60m) >"$out" 2>&1 || {
		cat "$out" >&2
		echo "steps: benchmarks failed for $label" >&2
		exit 1
	}
	{
		echo "# step $label $desc"
		cat "$out"
	} >>build/bench-steps.txt
	p1=$(agg BenchmarkAgentLifecycleAB paired-ratio range <"$out")
	p2=$(agg BenchmarkAgentExecAB paired-ratio range <"$out")
	p1ms="$(agg BenchmarkAgentLifecycleAB A-median-ms <"$out") -> $(agg BenchmarkAgentLifecycleAB B-median-ms <"$out")"
	p2ms="$(agg BenchmarkAgentExecAB A-median-ms <"$out") -> $(agg BenchmarkAgentExecAB B-median-ms <"$out")"
	echo "| $desc | $label | $p1 | $p1ms | $p2 | $p2ms |" >>"$table"
done
echo
echo "Paired ratios B/A (after/before; below 1 = faster): median [range] of $count runs of $pairs alternating pairs; load $(cut -d' ' -f1-3 /proc/loadavg)"
cat "$table"
