#!/bin/sh
# Fault: a device-mapper device with a mounted, dirty file system on it, suspended at the
# last moment, so that its unmount and its removal block in the kernel. It is set up by a
# systemd-shutdown hook, which runs after systemd's own teardown and right before the
# pivot, so the fault reaches exitrd instead of hanging systemd first. exitrd must give
# up on it after the step timeout, still take the root stack apart, and power off.
set -eu
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

cat >/usr/lib/systemd/system-shutdown/zz-exitrd-fault <<'HOOK'
#!/bin/sh
# Runs in systemd-shutdown; the root is read-only by now, /run is still there.
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }
[ "$1" = poweroff ] || exit 0
truncate -s 32M /run/fault.img
loop=$(losetup --find --show /run/fault.img)
size=$(blockdev --getsz "$loop")
# udevd is gone by now: without --noudevsync dmsetup would wait for it forever.
echo "0 $size linear $loop 0" | dmsetup create --noudevsync fault
dmsetup mknodes fault
mkfs.ext4 -q /dev/mapper/fault
mkdir -p /run/fault-mnt
mount /dev/mapper/fault /run/fault-mnt
echo dirty >/run/fault-mnt/file
dmsetup suspend --noudevsync --nolockfs --noflush fault
log "fault: /run/fault-mnt on suspended dm 'fault' over $loop"
HOOK
chmod 0755 /usr/lib/systemd/system-shutdown/zz-exitrd-fault
log "suspended-dm fault armed for the shutdown"
