#!/bin/sh
# Check boot (runs as PID 1 via init=, root mounted read-only by the initramfs):
# report the marker, /proc/mdstat and the initramfs fsck log.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu

log "marker=$(cat /root/marker 2>/dev/null || echo MISSING)"
while IFS= read -r l; do
	[ -n "$l" ] && log "mdstat $l"
done </proc/mdstat
if [ -r /run/initramfs/fsck.log ]; then
	while IFS= read -r l; do
		[ -n "$l" ] && log "fsck $l"
	done </run/initramfs/fsck.log
fi
log "check: done"
