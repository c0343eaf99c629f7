#!/bin/sh
# Installer for scenario encrypted-lvm: the layout Debian's installer creates with
# "Guided - use entire disk and set up encrypted LVM" on a UEFI machine:
#   vda1  ESP, vfat, on /boot/efi
#   vda2  ext4, /boot (kernel, initramfs, GRUB's files)
#   vda3  LUKS2 "vda3_crypt" -> VG "exitrd-vm-vg" (the host name + "-vg") -> LVs root
#         (ext4, /) and swap_1 (swap, the resume device)
# booted by the firmware (OVMF) through GRUB from the ESP and /boot.
# Where it differs from the installer, for the harness: the key is a key file in the
# initramfs (nobody types a passphrase here) and its PBKDF is cheap; GRUB goes to the
# removable-media path without an NVRAM entry or shim (qemu's firmware keeps no
# variables between boots); no "quiet" (the log is the test's evidence); GRUB adds the
# host's per-boot kernel arguments from the HARNESS disk (see 05_exitrd_harness below).
# The disk is /dev/vdb here and /dev/vda when the installed system boots.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu
installer_start 1

disk=$disk1
vg=exitrd-vm-vg
crypt=vda3_crypt

log "installer: GPT on $disk: ESP, /boot, LUKS2"
sfdisk --quiet "$disk" <<EOF
label: gpt
size=128MiB, type=uefi, name="EFI System Partition"
size=384MiB, type=linux
type=linux
EOF
udevadm settle
mkfs.vfat -F 32 "${disk}1" >/dev/null
mkfs.ext4 -q "${disk}2"

luks_create "${disk}3" "$crypt" root

log "installer: LVM $vg: root, swap_1"
pvcreate -q "/dev/mapper/$crypt"
vgcreate -q "$vg" "/dev/mapper/$crypt"
lvcreate -q -y -l 88%FREE -n root "$vg"
lvcreate -q -y -l 100%FREE -n swap_1 "$vg"
udevadm settle
root_dev=/dev/mapper/exitrd--vm--vg-root
swap_dev=/dev/mapper/exitrd--vm--vg-swap_1
mkfs.ext4 -q "$root_dev"
mkswap "$swap_dev" >/dev/null

log "installer: copying the root file system"
mkdir -p "$target"
mount "$root_dev" "$target"
mkdir -p "$target/boot"
mount "${disk}2" "$target/boot"
mkdir -p "$target/boot/efi"
mount "${disk}1" "$target/boot/efi"
copy_rootfs "$target"
install -d -m 0700 "$target/etc/keys"
install -m 0400 "$keys/root.key" "$target/etc/keys/root.key"

uuid() { blkid -s UUID -o value "$1"; }
{
	echo "$root_dev / ext4 errors=remount-ro 0 1"
	echo "UUID=$(uuid "${disk}2") /boot ext4 defaults 0 2"
	echo "UUID=$(uuid "${disk}1") /boot/efi vfat umask=0077 0 1"
	echo "$swap_dev none swap sw 0 0"
} >"$target/etc/fstab"
echo "$crypt UUID=$luks_uuid /etc/keys/root.key luks,discard" >"$target/etc/crypttab"
echo 'KEYFILE_PATTERN="/etc/keys/*.key"' >>"$target/etc/cryptsetup-initramfs/conf-hook"
echo 'UMASK=0077' >>"$target/etc/initramfs-tools/initramfs.conf"
echo "RESUME=UUID=$(uuid "$swap_dev")" >"$target/etc/initramfs-tools/conf.d/resume"
configure_initramfs "$target"

target_initramfs

log "installer: GRUB for UEFI on the ESP, its configuration on /boot"
cat >"$target/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0 \$harness_args"
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF
# GRUB expands $harness_args when it boots: this snippet, run before the menu entries,
# sets it from grub.cfg on the disk labelled HARNESS (the host writes it per boot).
cat >"$target/etc/grub.d/05_exitrd_harness" <<'EOF'
#!/bin/sh
cat <<'CFG'
insmod ext2
set harness_args=""
if search --no-floppy --label --set=harness_disk HARNESS; then
	if [ -f ($harness_disk)/grub.cfg ]; then
		source ($harness_disk)/grub.cfg
	fi
fi
export harness_args
CFG
EOF
chmod 0755 "$target/etc/grub.d/05_exitrd_harness"
with_chroot "$target" grub-install --target=x86_64-efi --efi-directory=/boot/efi \
	--removable --no-nvram
with_chroot "$target" update-grub
# (grub-mkconfig sources /etc/default/grub: the backslash keeps the dollar for GRUB.)
grep -qE '^[[:space:]]*linux[[:space:]].*[$]harness_args' "$target/boot/grub/grub.cfg" ||
	die "grub.cfg's linux lines lack \$harness_args"
log "installer: grub.cfg: $(grep -m1 -E '^\s*linux\s' "$target/boot/grub/grub.cfg" | sed 's/^[[:space:]]*//')"
log "installer: ESP: $(cd "$target/boot/efi" && find . -type f | tr '\n' ' ')"

log "installer: closing the stack"
umount "$target/boot/efi" "$target/boot" "$target"
udevadm settle
vgchange -q -an "$vg"
cryptsetup close "$crypt"
log "installer: done"
