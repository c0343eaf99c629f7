#!/bin/sh
# Installer for the luks-root stack: ext4 as / directly on LUKS2, nothing between them
# (no LVM, no MD). Under dracut's systemd initrd systemd-cryptsetup unlocks it, and no
# dracut module asks for dracut's shutdown (/run/initramfs/.need_shutdown): dracut never
# pivots (dracut-ng issue #2254). Same conventions as install-lvm-luks-md.sh.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu
installer_start 1

luks_create "$disk1" root_crypt root
mkfs.ext4 -q -L root /dev/mapper/root_crypt

log "installer: copying the root file system"
mkdir -p "$target"
mount /dev/mapper/root_crypt "$target"
copy_rootfs "$target"
install -d -m 0700 "$target/etc/keys"
install -m 0400 "$keys/root.key" "$target/etc/keys/root.key"

echo '/dev/mapper/root_crypt / ext4 errors=remount-ro 0 1' >"$target/etc/fstab"
echo "root_crypt UUID=$luks_uuid /etc/keys/root.key luks,discard" >"$target/etc/crypttab"
echo 'KEYFILE_PATTERN="/etc/keys/*.key"' >>"$target/etc/cryptsetup-initramfs/conf-hook"
echo 'UMASK=0077' >>"$target/etc/initramfs-tools/initramfs.conf"
configure_initramfs "$target"

target_initramfs

log "installer: closing the stack"
umount "$target"
udevadm settle
cryptsetup close root_crypt
log "installer: done"
