#!/bin/sh
# Installer for scenarios nbd-root and nbd-server-gone: ext4 as / on a whole disk that
# later boots see only over the network: the host serves it over NBD (vm.py nbd_export)
# and the initramfs connects with nbd-client's local-top script (nbdroot=, ip=dhcp,
# nbd-client ... -persist -systemd-mark). Here it is a plain virtio disk.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu
stage_system
# Private mount namespace: the target's mounts must not leak into running services.
if [ -z "${HARNESS_UNSHARED:-}" ]; then
	HARNESS_UNSHARED=1 exec unshare --mount --propagation private sh "$0" "$@"
fi

# shellcheck disable=SC2086 # STACK_DISKS is a list of device paths
set -- $STACK_DISKS
[ "$#" -eq 1 ] || die "need one disk, got: $STACK_DISKS"
command -v nbd-client >/dev/null || die "nbd-client is not installed in the rootfs"
target=/mnt/target

log "installer: ext4 on $1 (the NBD export)"
mkfs.ext4 -q -L root "$1"
mkdir -p "$target"
mount "$1" "$target"
copy_rootfs "$target"

# _netdev: the root needs the network (systemd orders it after network-online).
echo '/dev/nbd0 / ext4 errors=remount-ro,_netdev 0 1' >"$target/etc/fstab"
configure_initramfs "$target"
# MODULES=dep follows the root, which is on the network now: the check boot (init= the
# harness, no udev after the initramfs) still needs the driver of its HARNESS disk.
echo virtio_blk >>"$target/etc/initramfs-tools/modules"

log "installer: update-initramfs in the target"
with_chroot "$target" update-initramfs -u -k all
save_initrd "$target" "$OUT_INITRD"

umount "$target"
log "installer: done"
