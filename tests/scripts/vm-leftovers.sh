#!/bin/sh
# vm-leftovers.sh: fail if a test run left QEMU processes or VM directories
# behind. Run it in CI after `go test ./...` (every VM test must clean up,
# including on failure). Prints what it found; exit status 1 if anything.
set -u
found=0
for stat in /proc/[0-9]*/stat; do
	pid=${stat#/proc/}; pid=${pid%/stat}
	comm=$(cut -d' ' -f2 "$stat" 2>/dev/null) || continue
	case "$comm" in
	"(qemu-system-x86"*)
		state=$(sed 's/.*) //' "$stat" | cut -d' ' -f1)
		echo "leftover qemu: pid $pid state $state: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-200)"
		found=1 ;;
	esac
done
for d in "${TMPDIR:-/tmp}"/keel-vm-* "${TMPDIR:-/tmp}"/keel-qemu-test-*; do
	[ -e "$d" ] || continue
	echo "leftover VM directory: $d"
	found=1
done
exit $found
