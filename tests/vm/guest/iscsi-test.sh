#!/bin/sh
# Test boot extra for the iSCSI root scenarios (run from /run, cwd /): log how the root is
# served (the root's device stack, the iSCSI session and its connection, the network) and
# what 'exitrd status' says of the network the root needs (issue 13.4).
log() {
	printf 'harness: iscsi: %s\n' "$*" >/dev/kmsg
}
log "root: $(findmnt -n -o SOURCE,FSTYPE /) on $(lsblk -n -s -o NAME,TYPE "$(findmnt -n -o SOURCE /)" | tr -s ' \n' ' ')"
for s in /sys/class/iscsi_session/session*; do
	[ -d "$s" ] || continue
	log "${s##*/}: $(cat "$s/targetname") $(cat "$s/state")"
done
for c in /sys/class/iscsi_connection/connection*; do
	[ -d "$c" ] || continue
	log "${c##*/}: $(cat "$c/persistent_address"):$(cat "$c/persistent_port")"
done
for p in /proc/[0-9]*; do
	[ -r "$p/cmdline" ] || continue
	cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
	case "$cmd" in
	*iscsi*) log "process ${p#/proc/}: $cmd" ;;
	esac
done
for c in /run/net-*.conf; do
	[ -r "$c" ] && log "net: $(grep -E '^(DEVICE|IPV4ADDR|IPV4GATEWAY)=' "$c" | tr '\n' ' ')"
done
if command -v exitrd >/dev/null; then
	exitrd status 2>&1 | grep -F 'iSCSI' | while IFS= read -r line; do
		log "status: $line"
	done
else
	log "status: exitrd is not installed"
fi
