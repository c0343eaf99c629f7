#!/bin/sh
# Installer for scenario lvm-luks-md: MD RAID1 -> LUKS2 -> LVM -> ext4 as /.
# Runs in the installer VM (root = the plain rootfs image on /dev/vda) and writes
# the stack onto the disks named in $STACK_DISKS, then the initramfs to $OUT_INITRD.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu
installer_start 2

log "installer: md0 on $disk1 $disk2"
mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 \
	--bitmap=internal --assume-clean "$disk1" "$disk2" </dev/null
udevadm settle

luks_create /dev/md0 md0_crypt root

log "installer: LVM vg0/root"
pvcreate -q /dev/mapper/md0_crypt
vgcreate -q vg0 /dev/mapper/md0_crypt
lvcreate -q -y -l 90%FREE -n root vg0
udevadm settle
mkfs.ext4 -q -L root /dev/mapper/vg0-root

log "installer: copying the root file system"
mkdir -p "$target"
mount /dev/mapper/vg0-root "$target"
copy_rootfs "$target"
install -d -m 0700 "$target/etc/keys"
install -m 0400 "$keys/root.key" "$target/etc/keys/root.key"

echo '/dev/mapper/vg0-root / ext4 errors=remount-ro 0 1' >"$target/etc/fstab"
echo "md0_crypt UUID=$luks_uuid /etc/keys/root.key luks,discard" >"$target/etc/crypttab"
echo 'KEYFILE_PATTERN="/etc/keys/*.key"' >>"$target/etc/cryptsetup-initramfs/conf-hook"
echo 'UMASK=0077' >>"$target/etc/initramfs-tools/initramfs.conf"
configure_initramfs "$target"
{
	echo 'HOMEHOST <system>'
	echo 'MAILADDR root'
	mdadm --detail --scan
} >"$target/etc/mdadm/mdadm.conf"
log "installer: mdadm.conf: $(grep ^ARRAY "$target/etc/mdadm/mdadm.conf")"

target_initramfs

log "installer: closing the stack"
umount "$target"
udevadm settle
vgchange -q -an vg0
cryptsetup close md0_crypt
mdadm --stop /dev/md0
log "installer: done"
