#!/bin/sh
# bench.sh DIR RUNTIME OP N: times N runs of OP with RUNTIME (runc or crun)
# inside the guest, so that no host round trip is counted, and prints
#     keel-guestbench RUNTIME OP N NS_PER_OP
# OP is "run" (`RUNTIME run` of /bin/true, create+start+wait+remove) or
# "exec" (`RUNTIME exec` of /bin/true in a container `RUNTIME run -d`
# started from DIR/sleep.json). DIR holds the bundle templates true.json
# and sleep.json, whose cgroupsPath is @CGROUP@. The runtime's state and
# the bundles live under ${TMPDIR:-/run}, a tmpfs in the guest. Bundles are
# written before the clock starts.
#
# bench.sh cgroup2 [OPTIONS] remounts /sys/fs/cgroup with OPTIONS (e.g.
# nsdelegate,favordynmods; none: no remount) and prints
# "keel-guestbench cgroup2 OPTS" with the options the kernel then shows.
#
# bench.sh migrate N moves this shell N times between two cgroups, each
# time after 0.3 s of quiet, alternately with cgroup2 remounted without and
# with favordynmods (paired, so load drift hits both alike), and prints
# "keel-guestbench sh migrate-off N NS" and "... migrate-on N NS", the mean
# time of one write to cgroup.procs each way: the first migration after a
# quiet period waits out an RCU grace period unless cgroup2 has
# favordynmods (perf-facts.md). It runs under bash, timed with
# $EPOCHREALTIME (date(1) would add two forks, more than the stall), and
# puts the mount options back.
set -eu

# remount_cgroup2 OPTIONS: --options-mode=ignore, as mount(8) would
# otherwise merge the current options (from mountinfo) into the remount,
# and favordynmods, once on, could not be turned off.
remount_cgroup2() {
	mount --options-mode=ignore -o "remount,$1" /sys/fs/cgroup
}

cgroup2_options() {
	awk '$2 == "/sys/fs/cgroup" && $3 == "cgroup2" { print $4 }' /proc/mounts
}

# The runs are timed with bash's $EPOCHREALTIME: a date(1) for the end
# time would be timed with the runtime (a subshell fork and an exec, ~35 ms
# under TCG: 8-10% of a `runc run` there, in every round of the paired
# benchmarks, which run N=1).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi

# usecs T: $EPOCHREALTIME's seconds.microseconds T in microseconds.
usecs() { echo $((${1%.*}${1#*.})); }

if [ "$1" = migrate ]; then
	n=$2
	case $n in '' | *[!0-9]*) echo "bench.sh: N must be a number" >&2; exit 2 ;; esac
	boot=nsdelegate
	case ,$(cgroup2_options), in *,favordynmods,*) boot=nsdelegate,favordynmods ;; esac
	home=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
	base=/sys/fs/cgroup/keel-guestbench-migrate-$$
	mkdir -p "$base/a" "$base/b"
	trap 'echo $$ >"$home/cgroup.procs"; rmdir "$base/a" "$base/b" "$base"; remount_cgroup2 $boot' EXIT
	off=0 on=0 i=1 to=$base/a
	while [ "$i" -le "$n" ]; do
		for mode in off on; do
			opts=nsdelegate
			if [ $mode = on ]; then opts=nsdelegate,favordynmods; fi
			remount_cgroup2 $opts
			case ,$(cgroup2_options), in
			*,favordynmods,*) [ $mode = on ] || { echo "bench.sh: favordynmods still on" >&2; exit 1; } ;;
			*) [ $mode = off ] || { echo "bench.sh: favordynmods not on" >&2; exit 1; } ;;
			esac
			sleep 0.3
			if [ "$to" = "$base/a" ]; then to=$base/b; else to=$base/a; fi
			t0=$EPOCHREALTIME
			echo $$ >"$to/cgroup.procs"
			t1=$EPOCHREALTIME
			d=$((${t1%.*}${t1#*.} - ${t0%.*}${t0#*.}))
			if [ $mode = on ]; then on=$((on + d)); else off=$((off + d)); fi
		done
		i=$((i + 1))
	done
	echo "keel-guestbench sh migrate-off $n $((off * 1000 / n))"
	echo "keel-guestbench sh migrate-on $n $((on * 1000 / n))"
	exit 0
fi

if [ "$1" = cgroup2 ]; then
	if [ -n "${2:-}" ]; then remount_cgroup2 "$2"; fi
	echo "keel-guestbench cgroup2 $(cgroup2_options)"
	exit 0
fi

dir=$1 rt=$2 op=$3 n=$4
case $rt in runc | crun) ;; *) echo "bench.sh: unknown runtime $rt" >&2; exit 2 ;; esac
case $n in '' | *[!0-9]*) echo "bench.sh: N must be a number" >&2; exit 2 ;; esac
work=$(mktemp -d "${TMPDIR:-/run}/keel-guestbench.XXXXXX")
root=$work/state
trap 'rm -rf "$work"' EXIT
tag=$rt-$$

bundle() { # bundle NAME TEMPLATE CGROUP
	mkdir -p "$work/$1"
	sed "s|@CGROUP@|$3|" "$dir/$2" >"$work/$1/config.json"
}

fail() {
	echo "bench.sh: $rt $*:" >&2
	cat "$work/log" >&2
	exit 1
}

case $op in
run)
	i=1
	while [ "$i" -le "$n" ]; do
		bundle "b$i" true.json "/keel-guestbench/$tag-$i"
		i=$((i + 1))
	done
	start=$EPOCHREALTIME
	i=1
	while [ "$i" -le "$n" ]; do
		"$rt" --root "$root" run --bundle "$work/b$i" "$tag-$i" </dev/null >"$work/log" 2>&1 || fail "run $i"
		i=$((i + 1))
	done
	end=$EPOCHREALTIME
	;;
exec)
	bundle sleep sleep.json "/keel-guestbench/$tag-sleep"
	"$rt" --root "$root" run -d --bundle "$work/sleep" "$tag" </dev/null >"$work/log" 2>&1 || fail "run -d"
	trap '"$rt" --root "$root" delete -f "$tag" >/dev/null 2>&1; rm -rf "$work"' EXIT
	start=$EPOCHREALTIME
	i=1
	while [ "$i" -le "$n" ]; do
		"$rt" --root "$root" exec "$tag" /bin/true </dev/null >"$work/log" 2>&1 || fail "exec $i"
		i=$((i + 1))
	done
	end=$EPOCHREALTIME
	;;
*)
	echo "bench.sh: unknown op $op" >&2
	exit 2
	;;
esac
echo "keel-guestbench $rt $op $n $((($(usecs "$end") - $(usecs "$start")) * 1000 / n))"
