# shellcheck shell=sh
# Sourced by every stage script (run.sh on the HARNESS disk) through $HARNESS_LIB.
# $HARNESS is where the HARNESS disk is mounted; $HARNESS/env holds the variables
# the host chose for this boot.

: "${HARNESS:=/mnt/harness}"

log() {
	printf 'harness: %s\n' "$*" >/dev/kmsg
}

die() {
	log "FAIL: $*"
	exit 1
}

# shellcheck disable=SC1091
. "$HARNESS/env"

mkdir -p "$HARNESS/out"

# stage_system: what a stage script (installer, package, dracut) needs from the system
# when the stage boot runs the harness as PID 1 (init=/usr/local/sbin/exitrd-harness)
# instead of systemd: under emulation a full systemd boot cost 30 s (stack) to 90 s
# (rootfs image with debootstrap's generic initrd) before run.sh started. A no-op under
# systemd (/run/systemd/system, the test of sd_booted()).
#  - the hostname: mdadm --create names the array <hostname>:0 (systemd set it);
#  - a writable root (booted "ro" as the stack's boots are: dpkg, update-initramfs);
#  - udevd: /dev/mapper and by-uuid links of the devices the stage makes, `udevadm
#    settle`, and lvm's and cryptsetup's udev synchronisation. The initramfs's udevd
#    exited before run-init; the devices it saw keep their links and database (/dev
#    and /run came along). No `udevadm trigger`: replaying the block devices' events
#    through the root's rules (mdadm --incremental, pvscan, blkid) cost 40 s of a
#    package boot under emulation and changes nothing the stages use.
# Once per boot (an installer calls it again after re-executing itself under unshare).
stage_system() {
	[ -d /run/systemd/system ] && return 0
	[ -e /run/harness-stage-system ] && return 0
	: >/run/harness-stage-system
	cat /etc/hostname >/proc/sys/kernel/hostname
	mount -o remount,rw /
	# The stack's other local file systems (encrypted-lvm's /boot and ESP: the kernel,
	# the initramfs and GRUB live there), as systemd's fstab units would mount them.
	mount -a -O no_netdev
	mkdir -p /dev/pts /dev/shm /run/lock
	mountpoint -q /dev/pts || mount -t devpts -o gid=5,mode=620 devpts /dev/pts
	mountpoint -q /dev/shm || mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
	# Its own stdio on /dev/null: the daemon outlives run.sh, and the harness reads
	# run.sh's output until every writer has closed it.
	/usr/lib/systemd/systemd-udevd --daemon </dev/null >/dev/null 2>&1
	udevadm settle
	log "stage: PID 1 is $(cat /proc/1/comm), udevd started, / read-write"
}

# installer_start N: how every stack installer (run without arguments) begins. The stage's system (as PID
# 1), then a private mount namespace, the script running again inside it: the target's
# mounts must not propagate into the namespaces of running services, where they would
# keep it busy. Then the N blank stack disks (STACK_DISKS) as $disk1..$disk3, and the
# installers' common paths.
installer_start() {
	stage_system
	if [ -z "${HARNESS_UNSHARED:-}" ]; then
		HARNESS_UNSHARED=1 exec unshare --mount --propagation private sh "$0"
	fi
	_want=$1
	# shellcheck disable=SC2086 # STACK_DISKS is a list of device paths
	set -- $STACK_DISKS
	[ "$#" -eq "$_want" ] || die "need $_want disk(s), got: $STACK_DISKS"
	# shellcheck disable=SC2034 # for the installer that sources this file
	disk1=${1:-} disk2=${2:-} disk3=${3:-} target=/mnt/target keys=/run/harness-keys
}

# luks_create DEVICE NAME KEY: LUKS2 on DEVICE with a new random key file $keys/KEY.key
# (cheap PBKDF: nobody types it, it is the boot's key file), opened as /dev/mapper/NAME;
# its UUID in $luks_uuid.
luks_create() {
	log "installer: LUKS2 $2 on $1"
	install -d -m 0700 "$keys"
	dd if=/dev/urandom of="$keys/$3.key" bs=64 count=1 2>/dev/null
	chmod 0400 "$keys/$3.key"
	cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 \
		--pbkdf-force-iterations 1000 --key-file "$keys/$3.key" "$1"
	cryptsetup open --key-file "$keys/$3.key" "$1" "$2"
	# shellcheck disable=SC2034 # for the installer that sources this file
	luks_uuid=$(cryptsetup luksUUID "$1")
}

# target_initramfs: build the target's initramfs in it and save it as $OUT_INITRD.
target_initramfs() {
	log "installer: update-initramfs in the target"
	with_chroot "$target" update-initramfs -u -k all
	save_initrd "$target" "$OUT_INITRD"
}

# stage_unmount: at the end of a stage boot as PID 1, unmount what stage_system mounted
# from fstab (deepest first), so those file systems are left clean too.
stage_unmount() {
	[ -e /run/harness-stage-system ] || return 0
	awk '$1 !~ /^#/ && $2 ~ /^\/./ && $3 != "swap" { print $2 }' /etc/fstab | sort -r |
		while read -r m; do
			if mountpoint -q "$m"; then umount "$m" || log "stage: cannot unmount $m"; fi
		done
}

# copy_rootfs TARGET: copy the running root file system (only that one) into TARGET.
# The test VMs have no sound, graphics, media, wireless, USB or InfiniBand hardware:
# those kernel modules (a third of the root file system) and the documentation are left
# out, which shortens the copy under emulation; depmod then drops them from the index.
copy_rootfs() {
	m='./usr/lib/modules/*/kernel'
	tar -C / --one-file-system --xattrs --xattrs-include='*' -cf - \
		--exclude=./usr/share/doc --exclude=./usr/share/man --exclude=./usr/share/locale \
		--exclude="$m/sound" --exclude="$m/drivers/gpu" --exclude="$m/drivers/media" \
		--exclude="$m/drivers/net/wireless" --exclude="$m/drivers/net/ethernet" \
		--exclude="$m/drivers/infiniband" --exclude="$m/drivers/iio" \
		--exclude="$m/drivers/staging" --exclude="$m/drivers/usb" \
		--exclude="$m/drivers/bluetooth" --exclude="$m/net/wireless" \
		--exclude="$m/net/mac80211" --exclude="$m/net/bluetooth" . |
		tar -C "$1" --xattrs --xattrs-include='*' -xpf -
	for k in "$1"/usr/lib/modules/*; do
		depmod -b "$1" "${k##*/}"
	done
	for d in dev proc sys run tmp mnt; do
		mkdir -p "$1/$d"
	done
	chmod 1777 "$1/tmp"
}

# configure_initramfs TARGET: the harness's initramfs-tools settings for TARGET
# ($INITRAMFS_CONF: space-separated assignments; $INITRAMFS_BUSYBOX=n: BUSYBOX=n).
configure_initramfs() {
	conf=$1/etc/initramfs-tools/initramfs.conf
	for l in ${INITRAMFS_CONF:-}; do
		echo "$l" >>"$conf"
	done
	if [ "${INITRAMFS_BUSYBOX:-y}" = n ]; then
		echo 'BUSYBOX=n' >>"$conf"
	fi
}

# with_chroot TARGET CMD...: run CMD in TARGET with /dev, /proc, /sys, /run bound in.
with_chroot() {
	t=$1
	shift
	for d in dev proc sys run; do
		mount --rbind "/$d" "$t/$d"
		mount --make-rslave "$t/$d"
	done
	rc=0
	chroot "$t" "$@" || rc=$?
	for d in run sys proc dev; do
		umount -R "$t/$d"
	done
	return "$rc"
}

# save_initrd ROOT NAME: copy ROOT's only /boot/initrd.img-* to the HARNESS disk.
save_initrd() {
	n=0
	for f in "$1"/boot/initrd.img-*; do
		[ -e "$f" ] || continue
		cp "$f" "$HARNESS/out/$2"
		n=$((n + 1))
	done
	[ "$n" -eq 1 ] || die "expected one initrd in $1/boot, found $n"
	log "saved $2 ($(wc -c <"$HARNESS/out/$2") bytes)"
}

# capture_fixture DEST: copy what exitrd's topology readers read, as plain files.
capture_fixture() {
	dest=$1
	mkdir -p "$dest/proc/self" "$dest/sys/class/block"
	cat /proc/self/mountinfo >"$dest/proc/self/mountinfo"
	cat /proc/swaps >"$dest/proc/swaps"
	for b in /sys/class/block/*; do
		[ -e "$b" ] || continue
		d=$dest/sys/class/block/${b##*/}
		mkdir -p "$d"
		for f in dev size ro partition uevent dm/name dm/uuid dm/suspended \
			md/level md/array_state md/metadata_version md/sync_action \
			loop/backing_file loop/autoclear; do
			[ -r "$b/$f" ] || continue
			mkdir -p "$(dirname "$d/$f")"
			cat "$b/$f" >"$d/$f" 2>/dev/null || rm -f "$d/$f"
		done
		for rel in holders slaves; do
			[ -d "$b/$rel" ] || continue
			mkdir -p "$d/$rel"
			for h in "$b/$rel"/*; do
				[ -e "$h" ] || [ -L "$h" ] || continue
				: >"$d/$rel/${h##*/}"
			done
		done
	done
	log "fixture captured"
}
