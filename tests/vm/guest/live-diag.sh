#!/bin/sh
# Scenario live, test boot: log the live-boot stack as the running system sees it, and
# install a systemd-shutdown hook that logs the loop devices and the live mounts right
# before the pivot (after systemd's own attempts to detach and unmount them).
set -eu
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

live_state() {
	for l in /sys/block/loop*/loop/backing_file; do
		[ -r "$l" ] || continue
		d=${l#/sys/block/}
		d=${d%%/*}
		log "$1 $d backing $(cat "$l") autoclear $(cat "/sys/block/$d/loop/autoclear")"
	done
	log "$1 memory: $(grep -E '^(MemFree|Cached|Shmem):' /proc/meminfo | tr -s ' \n' ' ')"
	# mount point, fs type and source (after the variable optional fields and "-")
	awk '{ i = 7; while ($i != "-") i++; print $5, $(i + 1), $(i + 2) }' /proc/self/mountinfo |
		while read -r mp fstype src; do
			case "$mp" in
			/ | /run/live* | /run/shutdown/*) log "$1 mount $mp $fstype $src" ;;
			esac
		done
}

live_state running
log "running initramfs tmpfs: $(grep ' /run/initramfs ' /proc/self/mountinfo | cut -d' ' -f6-)"

# With --capture, the hook also captures what the exitrd will face (the state after
# systemd's own teardown) into the fixture's prepivot/ folder: it mounts the HARNESS disk
# again for that (the root is read-only by then; /run/harness/lib.sh is still there).
capture=0
# shellcheck disable=SC1091
[ -r "${HARNESS:-/mnt/harness}/env" ] && . "${HARNESS:-/mnt/harness}/env"
[ "${CAPTURE:-0}" = 1 ] && capture=1

cat >/usr/lib/systemd/system-shutdown/zz-live-diag <<HOOK
#!/bin/sh
log() { printf 'harness: %s\n' "\$*" >/dev/kmsg; }
$(sed -n '/^live_state()/,/^}/p' "$0")
live_state pre-pivot
if [ $capture = 1 ] && [ "\$1" = poweroff ]; then
	if dev=\$(blkid -L HARNESS) && mount "\$dev" /mnt/harness; then
		(HARNESS=/mnt/harness && . /run/harness/lib.sh &&
			capture_fixture /mnt/harness/out/fixture/prepivot)
		sync
		umount /mnt/harness || log "pre-pivot: cannot unmount /mnt/harness"
	else
		log "pre-pivot: cannot mount the HARNESS disk"
	fi
fi
exit 0
HOOK
chmod 0755 /usr/lib/systemd/system-shutdown/zz-live-diag
log "live diagnostics armed for the shutdown"

# Under TCG with init_on_free=1, zeroing the squashfs's page cache when the exitrd unmounts
# the overlay took from 3 s to over a minute (host load), beyond the step timeout. The
# clean page cache is dropped here so that the test measures the teardown, not the
# emulator; the tmpfs upper layer's pages (the data a live system must not leave behind)
# are not cache and are still freed by the exitrd's unmount.
sync
echo 3 >/proc/sys/vm/drop_caches
live_state "after drop_caches:"
