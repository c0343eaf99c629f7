#!/bin/sh
# Test boot of lvm-cache-thin (Scenario.test_extra, run last before the poweroff): make
# the writeback cache hold dirty blocks, log the cache, pool and array state, and add
# /proc/mdstat (md1's bitmap file) to a captured fixture.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu

cache_dm=vg0-pool_tdata

cache_figures() {
	# dm-cache status: ... <cache block size> <used>/<total> <read hits> <read misses>
	# <write hits> <write misses> <demotions> <promotions> <dirty> ...
	dmsetup status "$cache_dm" | awk '{ split($7, u, "/"); print "used=" u[1] " dirty=" $14 " total=" u[2] }'
}

log "cache before writing: $(cache_figures)"
# 48 MiB written, read back three times (so the policy promotes it into the cache), then
# overwritten in place: write hits on cached blocks, which writeback mode keeps dirty.
f=/root/cache-fill
dd if=/dev/zero of="$f" bs=1M count=48 oflag=direct 2>/dev/null
for _ in 1 2 3; do
	dd if="$f" of=/dev/null bs=1M iflag=direct 2>/dev/null
done
dd if=/dev/zero of="$f" bs=1M count=48 oflag=direct conv=notrunc 2>/dev/null
sync
log "figure test-boot cache before poweroff: $(cache_figures)"
lvs -a --noheadings -o lv_name,segtype,cache_mode,cache_used_blocks,cache_dirty_blocks,lv_health_status vg0 2>&1 |
	while IFS= read -r l; do log "lvs $l"; done
dmsetup status vg0-pool-tpool | while IFS= read -r l; do log "thin-pool status: $l"; done
while IFS= read -r l; do
	[ -n "$l" ] && log "mdstat $l"
done </proc/mdstat
if [ "${CAPTURE:-0}" = 1 ] && [ -d "$HARNESS/out/fixture/proc" ]; then
	cat /proc/mdstat >"$HARNESS/out/fixture/proc/mdstat"
	log "fixture: added /proc/mdstat"
fi
