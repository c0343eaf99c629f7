#!/bin/sh
# Installer for scenario zfs-luks: ext4 as / on the first disk; a ZFS pool "tank" on
# LUKS2 (keyfile in crypttab) on the second, its dataset tank/data mounted on /srv/tank.
# The rootfs carries zfs-dkms built natively on the host (Scenario.native_packages).
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu
stage_system
if [ -z "${HARNESS_UNSHARED:-}" ]; then
	HARNESS_UNSHARED=1 exec unshare --mount --propagation private sh "$0" "$@"
fi

# shellcheck disable=SC2086 # STACK_DISKS is a list of device paths
set -- $STACK_DISKS
[ "$#" -eq 2 ] || die "need two disks, got: $STACK_DISKS"
target=/mnt/target
keys=/run/harness-keys

# A host id before the module loads: pools record it, and an import by a host with
# another id then needs -f unless the pool was exported.
[ -s /etc/hostid ] || zgenhostid
modprobe zfs
log "installer: hostid $(hostid), zfs $(cat /sys/module/zfs/version)"

log "installer: ext4 root on $1"
mkfs.ext4 -q -L root "$1"

log "installer: LUKS2 on $2"
install -d -m 0700 "$keys"
dd if=/dev/urandom of="$keys/tank.key" bs=64 count=1 2>/dev/null
chmod 0400 "$keys/tank.key"
cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 \
	--pbkdf-force-iterations 1000 --key-file "$keys/tank.key" "$2"
cryptsetup open --key-file "$keys/tank.key" "$2" tank_crypt
luks_uuid=$(cryptsetup luksUUID "$2")

log "installer: pool tank on tank_crypt, tank/data on /srv/tank"
zpool create -o ashift=12 -o cachefile=/etc/zfs/zpool.cache -O mountpoint=none tank \
	/dev/mapper/tank_crypt
zfs create -o mountpoint=/srv/tank tank/data
echo installed >/srv/tank/installed

log "installer: copying the root file system"
mkdir -p "$target"
mount "$1" "$target"
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

log "installer: update-initramfs in the target"
with_chroot "$target" update-initramfs -u -k all
save_initrd "$target" "$OUT_INITRD"

log "installer: closing the stack"
umount "$target"
zpool export tank
cryptsetup close tank_crypt
log "installer: done"
