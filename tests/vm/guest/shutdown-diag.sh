#!/bin/sh
# Installed by test.sh as /usr/lib/systemd/system-shutdown/exitrd-harness-diag:
# systemd-shutdown runs it just before it pivots into the exitrd. It logs the state of
# the device-mapper devices and MD arrays at that moment (kmsg, prefix "harness:").
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
exit 0
