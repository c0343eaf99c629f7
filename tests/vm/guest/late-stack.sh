#!/bin/sh
# A second stack that only exitrd can close: ext4 on a plain DM device on a dm-crypt
# mapping on an MD RAID1 of two loop devices (files in /run). A systemd-shutdown hook
# builds it after systemd's own teardown and right before the pivot, so systemd never
# flags its DM devices for deferred removal nor its loop devices for autoclear: every
# close is exitrd's own DM_DEV_REMOVE, STOP_ARRAY and LOOP_CLR_FD, which the scenario
# asserts (on trixie, the root stack's DM devices go by the kernel's deferred removal).
set -eu
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

cat >/usr/lib/systemd/system-shutdown/zz-exitrd-late-stack <<'HOOK'
#!/bin/sh
# Runs in systemd-shutdown: / is read-only, udevd is gone (hence --noudevsync and
# MDADM_NO_UDEV), /run is still there.
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }
[ "$1" = poweroff ] || exit 0
set -e
truncate -s 64M /run/late1.img /run/late2.img
l1=$(losetup --find --show /run/late1.img)
l2=$(losetup --find --show /run/late2.img)
MDADM_NO_UDEV=1 mdadm --create /dev/md9 --run --level=1 --raid-devices=2 \
	--metadata=1.2 --assume-clean "$l1" "$l2" </dev/null 2>/dev/null
size=$(blockdev --getsz /dev/md9)
key=$(od -An -tx1 -N64 /dev/urandom | tr -d ' \n')
echo "0 $size crypt aes-xts-plain64 $key 0 /dev/md9 0" |
	dmsetup create --noudevsync --uuid CRYPT-PLAIN-late_crypt late_crypt
# By device number: without udev there is no /dev/mapper node until dmsetup makes one.
crypt_dev=$(dmsetup info -c --noheadings -o major,minor late_crypt | tr -d ' ')
echo "0 $size linear $crypt_dev 0" | dmsetup create --noudevsync late-top
dmsetup mknodes late-top
mkfs.ext4 -q /dev/mapper/late-top
mkdir -p /run/late-mnt
mount /dev/mapper/late-top /run/late-mnt
echo late >/run/late-mnt/file
log "late stack: /run/late-mnt on late-top, late_crypt, md9, ${l1#/dev/} ${l2#/dev/}"
HOOK
chmod 0755 /usr/lib/systemd/system-shutdown/zz-exitrd-late-stack
log "late stack armed for the shutdown"
