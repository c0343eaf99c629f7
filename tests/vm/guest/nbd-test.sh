#!/bin/sh
# Test boot extra for the NBD root scenarios (run from /run, cwd /): log how the root is
# served (nbd0's pid file, the nbd-client process and its systemd mark, the network),
# and what nbd-client would add to the exitrd payload if the disconnect were left to it.
log() {
	printf 'harness: nbd: %s\n' "$*" >/dev/kmsg
}
log "root: $(findmnt -n -o SOURCE,FSTYPE /)"
log "nbd0 size: $(cat /sys/block/nbd0/size) sectors, pid file: $(cat /sys/block/nbd0/pid 2>/dev/null || echo none)"
for p in /proc/[0-9]*; do
	[ -r "$p/cmdline" ] || continue
	cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
	case "$cmd" in
	*bd-client*) log "process ${p#/proc/}: $cmd" ;;
	esac
done
for n in /sys/class/net/*; do
	log "net: ${n##*/} $(cat "$n/operstate")"
done
for c in /run/net-*.conf; do
	[ -r "$c" ] && log "net: $(grep -E '^(DEVICE|IPV4ADDR|IPV4GATEWAY)=' "$c" | tr '\n' ' ')"
done
# nbd-client, its libraries and a shell for a hook: the bytes exitrd does not need,
# because it disconnects with two ioctls of its own.
client=$(command -v nbd-client)
files="$client $(readlink -f /bin/sh)"
for f in $(ldd "$client" /bin/sh 2>/dev/null | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) .*/\1/p' | sort -u); do
	files="$files $(readlink -f "$f")"
done
# shellcheck disable=SC2086 # a list of paths
kib=$(du -ckL $files | tail -n 1 | cut -f1)
log "nbd-client with its libraries and sh: $kib KiB (not in the payload)"
# What 'exitrd status' says of the network the root needs (issue 13.4): the interface
# that leads to the server, and whether whatever configured it keeps it until the pivot.
if command -v exitrd >/dev/null; then
	exitrd status 2>&1 | grep -F 'on the NBD device' | while IFS= read -r line; do
		log "status: $line"
	done
else
	log "status: exitrd is not installed"
fi
