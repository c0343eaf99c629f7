#!/bin/sh
# Check boot of lvm-cache-thin (Scenario.check_extra, run as run.sh): right after the
# initramfs activated the stack, before anything writes, read what dm-cache and the thin
# pool found on their metadata; then the common checks (check.sh).
#
# dm-cache keeps its dirty bits across a clean shutdown (writeback mode does not flush on
# deactivation), but after an unclean one it cannot trust them and counts every cached
# block as dirty: "dirty = used" is the unclean case, "dirty < used" a recorded clean one.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu

st=$(dmsetup status vg0-pool_tdata 2>&1) || st=
log "cache status: $st"
used=$(printf '%s\n' "$st" | awk '$3 == "cache" { split($7, u, "/"); print u[1] }')
dirty=$(printf '%s\n' "$st" | awk '$3 == "cache" { print $14 }')
bsize=$(printf '%s\n' "$st" | awk '$3 == "cache" { print $6 }')
# smq writes dirty blocks back as soon as the cache is idle, so by now some of what was
# dirty at activation may be clean again: what went to the origin device since boot
# (sectors written, /sys/class/block/dm-N/stat field 7) counts as dirty at activation.
corig=$(dmsetup info -c --noheadings -o blkdevname vg0-pool_tdata_corig 2>/dev/null) || corig=
written=$(awk '{ print $7 }' "/sys/class/block/$corig/stat" 2>/dev/null) || written=
wb=$(( ${written:-0} / ${bsize:-128} ))
log "figure check-boot cache after activation: used=${used:-?} dirty=${dirty:-?} written-back-since-boot=$wb (blocks of ${bsize:-?} sectors)"
lvs -a --noheadings -o lv_name,cache_used_blocks,cache_dirty_blocks,lv_health_status vg0 2>&1 |
	while IFS= read -r l; do log "lvs $l"; done
if [ -z "$used" ] || [ -z "$dirty" ]; then
	log "cache: no dm-cache status"
elif [ "$used" -eq 0 ]; then
	log "cache: empty, nothing to compare"
elif [ $(( (dirty + wb) * 10 )) -lt $(( used * 9 )) ]; then
	log "cache: dirty below used: the clean shutdown was recorded ($((dirty + wb)) of $used dirty at activation)"
else
	log "cache: every used block dirty: unclean shutdown ($((dirty + wb)) of $used dirty at activation)"
fi

pool=$(dmsetup status vg0-pool-tpool 2>&1) || pool=
log "thin-pool status: $pool"
case " $pool " in
*" thin-pool "*" needs_check "*) log "thin pool: needs_check set" ;;
*" thin-pool "*) log "thin pool: no needs_check" ;;
*) log "thin pool: no status" ;;
esac
lvs --noheadings -o lv_name,lv_health_status,lv_attr vg0/pool 2>&1 |
	while IFS= read -r l; do log "lvs pool health: $l"; done

md=$(awk '/^md1 /{f=1} f && /^ *$/{f=0} f' /proc/mdstat | tr -s ' \n' ' ')
log "figure check-boot md1: $md"

sh "${HARNESS_LIB%/*}/check.sh"
