#!/bin/sh
# exitrd-harness: baked into the VM test images as /usr/local/sbin/exitrd-harness.
#
# Waits (bounded) for a disk labelled HARNESS, mounts it on /mnt/harness and runs
# its run.sh with sh. Without such a disk it does nothing. All output goes to
# /dev/kmsg with the prefix "harness:" (the serial console shows the kernel log,
# and writers to ttyS0 itself lose lines when a getty hangs it up).
#
# Two modes:
#  - as a systemd oneshot service (exitrd-harness.service): after run.sh the HARNESS
#    disk is unmounted and a normal "systemctl poweroff" is queued;
#  - as PID 1 (kernel command line init=/usr/local/sbin/exitrd-harness, used by the
#    quick check boots): after run.sh it unmounts, syncs and powers off at once.
set -u

mnt=/mnt/harness
work=/run/harness

log() {
	printf 'harness: %s\n' "$*" >/dev/kmsg 2>/dev/null || printf 'harness: %s\n' "$*" >&2
}

finish() {
	if [ "$$" -eq 1 ]; then
		sync
		log "powering off (pid 1)"
		poweroff -f -f
		echo o >/proc/sysrq-trigger
		while :; do sleep 60; done
	fi
	exit 0
}

dev=
i=0
while [ "$i" -lt 20 ]; do
	if [ -e /dev/disk/by-label/HARNESS ]; then
		dev=/dev/disk/by-label/HARNESS
		break
	fi
	dev=$(blkid -L HARNESS 2>/dev/null) || dev=
	[ -n "$dev" ] && break
	sleep 1
	i=$((i + 1))
done
if [ -z "$dev" ]; then
	log "no HARNESS disk, nothing to do"
	[ "$$" -eq 1 ] && finish
	exit 0
fi

mkdir -p "$mnt" "$work" 2>/dev/null || true
if ! mount "$dev" "$mnt"; then
	log "cannot mount $dev"
	finish
fi
# Run from a copy so that the HARNESS file system can be unmounted afterwards.
cp "$mnt"/*.sh "$work"/
log "run.sh start"
rm -f "$work/rc"
{
	HARNESS=$mnt HARNESS_LIB=$work/lib.sh sh "$work/run.sh"
	echo "$?" >"$work/rc"
} 2>&1 </dev/null | while IFS= read -r line; do log "| $line"; done
rc=$(cat "$work/rc" 2>/dev/null || echo unknown)
log "run.sh exit=$rc"
sync
umount "$mnt" || log "cannot unmount $mnt"
if [ "$$" -ne 1 ]; then
	log "queueing poweroff"
	systemctl --no-block poweroff
fi
finish
