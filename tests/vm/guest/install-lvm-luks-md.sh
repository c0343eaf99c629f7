#!/bin/sh
# Installer for scenario lvm-luks-md: MD RAID1 -> LUKS2 -> LVM -> ext4 as /.
# Runs in the installer VM (root = the plain rootfs image on /dev/vda) and writes
# the stack onto the disks named in $STACK_DISKS, then the initramfs to $OUT_INITRD.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu
stage_system
# Work in a private mount namespace: mounts made here must not propagate into the
# namespaces of running services, where they would keep the target busy.
if [ -z "${HARNESS_UNSHARED:-}" ]; then
	HARNESS_UNSHARED=1 exec unshare --mount --propagation private sh "$0" "$@"
fi

# shellcheck disable=SC2086 # STACK_DISKS is a list of device paths
set -- $STACK_DISKS
[ "$#" -eq 2 ] || die "need two disks, got: $STACK_DISKS"
target=/mnt/target
keys=/run/harness-keys

log "installer: md0 on $1 $2"
mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 \
	--bitmap=internal --assume-clean "$1" "$2" </dev/null
udevadm settle

log "installer: LUKS2 on md0"
install -d -m 0700 "$keys"
dd if=/dev/urandom of="$keys/root.key" bs=64 count=1 2>/dev/null
chmod 0400 "$keys/root.key"
cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 \
	--pbkdf-force-iterations 1000 --key-file "$keys/root.key" /dev/md0
cryptsetup open --key-file "$keys/root.key" /dev/md0 md0_crypt
luks_uuid=$(cryptsetup luksUUID /dev/md0)

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

log "installer: update-initramfs in the target"
with_chroot "$target" update-initramfs -u -k all
save_initrd "$target" "$OUT_INITRD"

log "installer: closing the stack"
umount "$target"
udevadm settle
vgchange -q -an vg0
cryptsetup close md0_crypt
mdadm --stop /dev/md0
log "installer: done"
