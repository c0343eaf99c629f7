#!/bin/sh
# Installer for scenarios nbd-root and nbd-server-gone: ext4 as / on a whole disk that
# later boots see only over the network: the host serves it over NBD (vm.py nbd_export)
# and the initramfs connects with nbd-client's local-top script (nbdroot=, ip=dhcp,
# nbd-client ... -persist -systemd-mark). Here it is a plain virtio disk.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu
installer_start 1

command -v nbd-client >/dev/null || die "nbd-client is not installed in the rootfs"

log "installer: ext4 on $disk1 (the NBD export)"
mkfs.ext4 -q -L root "$disk1"
mkdir -p "$target"
mount "$disk1" "$target"
copy_rootfs "$target"

# _netdev: the root needs the network (systemd orders it after network-online).
echo '/dev/nbd0 / ext4 errors=remount-ro,_netdev 0 1' >"$target/etc/fstab"
configure_initramfs "$target"
# MODULES=dep follows the root, which is on the network now: the check boot (init= the
# harness, no udev after the initramfs) still needs the driver of its HARNESS disk.
echo virtio_blk >>"$target/etc/initramfs-tools/modules"

target_initramfs

umount "$target"
log "installer: done"
