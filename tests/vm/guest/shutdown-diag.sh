#!/bin/sh
# Installed by test.sh as /usr/lib/systemd/system-shutdown/exitrd-harness-diag:
# systemd-shutdown runs it just before it pivots into the exitrd. It logs the state of
# the device-mapper devices, MD arrays, active swaps and block-device mounts at that
# moment (kmsg, prefix "harness:"): what systemd's own teardown left for the exitrd.
log() {
	printf 'harness: pre-pivot %s\n' "$*" >/dev/kmsg
}
log "argv: $*"
if command -v dmsetup >/dev/null 2>&1; then
	dmsetup info 2>&1 | grep -E '^(Name|State|Open count):' | while IFS= read -r l; do
		log "dm $l"
	done
fi
while IFS= read -r l; do
	[ -n "$l" ] && log "mdstat $l"
done </proc/mdstat
swaps=0
while read -r dev _ _ _ _; do
	[ "$dev" = Filename ] && continue
	log "swap $dev"
	swaps=$((swaps + 1))
done </proc/swaps
[ "$swaps" -eq 0 ] && log "swaps: none"
while read -r dev mnt fstype _; do
	case "$dev" in /dev/*) log "mount: $mnt ($fstype on $dev)" ;; esac
done </proc/mounts
exit 0
