#!/bin/sh
# Installer for scenarios iscsi-root and iscsi-target-gone: LVM on a whole disk (VG vgi,
# LV root, ext4 /) that later boots see only as an iSCSI LUN: the host serves it
# (qemu.iscsi_export: tgtd) and open-iscsi's local-top script logs in with iscsistart
# (iscsi_target_name=, iscsi_target_ip=, after ip=dhcp); lvm2's initramfs scripts then
# activate the VG on the SCSI disk. Here it is a plain virtio disk.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu
installer_start 1

command -v iscsistart >/dev/null || die "open-iscsi is not installed in the rootfs"

log "installer: LVM volume group vgi on $disk1 (the iSCSI LUN), ext4 on vgi/root"
pvcreate -q "$disk1"
vgcreate -q vgi "$disk1"
lvcreate -q -y -n root -L 2600M vgi
mkfs.ext4 -q -L root /dev/vgi/root
mkdir -p "$target"
mount /dev/vgi/root "$target"
copy_rootfs "$target"

# _netdev: the root needs the network (systemd orders it after network-online).
echo '/dev/mapper/vgi-root / ext4 errors=remount-ro,_netdev 0 1' >"$target/etc/fstab"
# Each initiator its own name (open-iscsi's postinst leaves the generating to its first
# start when it runs in a chroot).
if ! grep -q '^InitiatorName=' "$target/etc/iscsi/initiatorname.iscsi" 2>/dev/null; then
	echo "InitiatorName=$(chroot "$target" iscsi-iname)" >"$target/etc/iscsi/initiatorname.iscsi"
fi
log "installer: $(cat "$target/etc/iscsi/initiatorname.iscsi")"
configure_initramfs "$target"
# MODULES=dep follows the root's devices, which are on the network now: the NIC's driver,
# the SCSI disk's, and (for the check boot's HARNESS disk) virtio_blk are named.
printf '%s\n' virtio_net sd_mod virtio_blk >>"$target/etc/initramfs-tools/modules"

target_initramfs

umount "$target"
udevadm settle
vgchange -q -an vgi
log "installer: done"
