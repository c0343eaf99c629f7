#!/bin/sh
# Fault: a root that can be neither unmounted nor made read-only. A file on / backs a
# loop device, under a device-mapper device 'stall' that is suspended with a direct write
# pending: the writer sits in uninterruptible I/O, the loop device keeps the file (and so
# the root) busy for writing. Set up by a systemd-shutdown hook, after systemd's own
# teardown (which left / read-only: the hook makes it writable again) and right before
# the pivot, so that the fault reaches exitrd instead of stalling systemd's unit stops.
# exitrd must then suspend the root LV with its writes flushed before the dm-crypt
# mapping below it, wipe that mapping's key, and power off within its deadline.
set -eu
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

cat >/usr/lib/systemd/system-shutdown/zz-exitrd-fault <<'HOOK'
#!/bin/sh
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }
case "$1" in poweroff | reboot) ;; *) exit 0 ;; esac
mount -o remount,rw / || { log "fault: cannot make / writable"; exit 0; }
truncate -s 16M /var/tmp/stall.img
loop=$(losetup --find --show /var/tmp/stall.img)
size=$(blockdev --getsz "$loop")
# udevd is gone by now: without --noudevsync dmsetup would wait for it forever.
echo "0 $size linear $loop 0" | dmsetup create --noudevsync stall
dmsetup mknodes stall
dmsetup suspend --noudevsync --nolockfs --noflush stall
setsid dd if=/dev/zero of=/dev/mapper/stall bs=4096 count=1 oflag=direct \
	</dev/null >/dev/null 2>&1 &
i=0
state=
while [ "$i" -lt 50 ]; do
	state=$(awk '{ print $3 }' "/proc/$!/stat" 2>/dev/null) || state=
	[ "$state" = D ] && break
	sleep 0.1
	i=$((i + 1))
done
log "fault: / held by $loop (/var/tmp/stall.img) under suspended dm 'stall', direct writer pid $! in state ${state:-gone}"
HOOK
chmod 0755 /usr/lib/systemd/system-shutdown/zz-exitrd-fault
log "stalled-root fault armed for the shutdown"
