#!/bin/sh
# Installer for scenario zfs-luks: ext4 as / on the first disk; a ZFS pool "tank" on
# LUKS2 (keyfile in crypttab) on the second, its dataset tank/data mounted on /srv/tank.
# The rootfs carries zfs-dkms built natively on the host (Scenario.native_packages).
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu
installer_start 2

# A host id before the module loads: pools record it, and an import by a host with
# another id then needs -f unless the pool was exported.
[ -s /etc/hostid ] || zgenhostid
modprobe zfs
log "installer: hostid $(hostid), zfs $(cat /sys/module/zfs/version)"

log "installer: ext4 root on $disk1"
mkfs.ext4 -q -L root "$disk1"

luks_create "$disk2" tank_crypt tank

log "installer: pool tank on tank_crypt, tank/data on /srv/tank"
zpool create -o ashift=12 -o cachefile=/etc/zfs/zpool.cache -O mountpoint=none tank \
	/dev/mapper/tank_crypt
zfs create -o mountpoint=/srv/tank tank/data
echo installed >/srv/tank/installed

log "installer: copying the root file system"
mkdir -p "$target"
mount "$disk1" "$target"
copy_rootfs "$target"
mkdir -p "$target/srv/tank"
[ -s "$target/etc/zfs/zpool.cache" ] || die "no zpool.cache in the target"
install -d -m 0700 "$target/etc/keys"
install -m 0400 "$keys/tank.key" "$target/etc/keys/tank.key"
echo 'LABEL=root / ext4 errors=remount-ro 0 1' >"$target/etc/fstab"
# trixie's rootfs has no systemd-cryptsetup (a package of its own since trixie): the
# initramfs opens the device (crypttab option "initramfs"), with the key file inside.
echo "tank_crypt UUID=$luks_uuid /etc/keys/tank.key luks,discard,initramfs" >"$target/etc/crypttab"
echo 'KEYFILE_PATTERN="/etc/keys/*.key"' >>"$target/etc/cryptsetup-initramfs/conf-hook"
echo 'UMASK=0077' >>"$target/etc/initramfs-tools/initramfs.conf"
configure_initramfs "$target"
for u in zfs-import-cache.service zfs-mount.service zfs-import.target zfs.target; do
	log "installer: $u $(systemctl --root="$target" is-enabled "$u" 2>&1 || :)"
done

target_initramfs

log "installer: closing the stack"
umount "$target"
zpool export tank
cryptsetup close tank_crypt
log "installer: done"
