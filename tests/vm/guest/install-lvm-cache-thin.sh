#!/bin/sh
# Installer for scenario lvm-cache-thin: ext4 as / on an LVM thin volume whose thin pool's
# data LV is cached by dm-cache in writeback mode; the cache sits on a second PV, an MD
# RAID1 of two "SSD" partitions whose write-intent bitmap is a FILE on a third partition's
# file system, mounted on /run/md-bitmap.
#
#   vdb (slow disk) ------------------------------- PV -\
#   vdc1 + vdd1 -> md1 (raid1, bitmap in a file) --- PV --> vg0: pool_tdata (dm-cache:
#   vdc2: ext4, /run/md-bitmap/md1.bitmap                  corig on vdb, cpool on md1)
#                                                          + pool_tmeta -> thin pool
#                                                          "pool" -> thin LV "root" = /
#
# Debian trixie's mdadm 4.4 refuses bitmap files ("Custom write-intent bitmap file option
# is not supported"), and udev's 'mdadm --incremental' never could attach one; the kernel
# still can (CONFIG_MD_BITMAP_FILE=y, "using deprecated bitmap file support"). So md1 is
# created without a bitmap, mdadm (udev and --scan) is told to leave it alone (ARRAY
# <ignore>), and md-bitmap-assemble (below) builds it through sysfs, attaching the file
# with the SET_BITMAP_FILE ioctl (perl) before the array starts, as mdadm 4.2 did. An
# initramfs-tools local-top script of this machine mounts the bitmap's file system and
# runs it at boot; /run, with that mount, then moves into the booted system.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu
installer_start 3

slow=$disk1
ssd_a=$disk2
ssd_b=$disk3
bm_dir=/run/md-bitmap
bm_file=$bm_dir/md1.bitmap

# md-bitmap-assemble MD BITMAP_FILE MEMBER...: assemble MD (1.2 metadata) from the
# MEMBERs with its write-intent bitmap in BITMAP_FILE, attached before the array runs.
cat >/run/md-bitmap-assemble <<'EOF'
#!/bin/sh
# md-bitmap-assemble MD BITMAP_FILE MEMBER...: assemble MD (e.g. md1, 1.2 metadata) from
# the MEMBERs with its write-intent bitmap in BITMAP_FILE, which the kernel must get
# before the array runs (SET_BITMAP_FILE = _IOW(9, 0x2b, int), the fd as argument).
set -eu
md=$1
file=$2
shift 2
sys=/sys/block/$md/md
echo "$md" >/sys/module/md_mod/parameters/new_array
echo 1.2 >"$sys/metadata_version"
for d in "$@"; do
	d=$(readlink -f "$d")
	cat "/sys/class/block/${d##*/}/dev" >"$sys/new_dev"
done
i=0
while [ ! -b "/dev/$md" ] && [ "$i" -lt 50 ]; do
	sleep 0.1
	i=$((i + 1))
done
perl -e 'open(my $f, "+<", $ARGV[0]) or die "$ARGV[0]: $!\n";
	open(my $m, "<", $ARGV[1]) or die "$ARGV[1]: $!\n";
	ioctl($m, 0x4004092b, fileno($f)) or die "SET_BITMAP_FILE $ARGV[0] on $ARGV[1]: $!\n";' \
	"$file" "/dev/$md"
echo active >"$sys/array_state"
EOF
chmod 0755 /run/md-bitmap-assemble

# No udev-triggered 'mdadm --incremental' in this installer VM may grab the members.
printf 'HOMEHOST <system>\nAUTO -all\n' >/etc/mdadm/mdadm.conf

log "installer: partitions: ${ssd_a}1 ${ssd_b}1 (md members), ${ssd_a}2 (bitmap file system)"
printf 'label: dos\n,440MiB,fd\n,,83\n' | sfdisk -q "$ssd_a"
printf 'label: dos\n,440MiB,fd\n' | sfdisk -q "$ssd_b"
udevadm settle
mkfs.ext4 -q -L MDBITMAP "${ssd_a}2"
mkdir -p "$bm_dir"
mount "${ssd_a}2" "$bm_dir"

log "installer: md1 (raid1) on ${ssd_a}1 ${ssd_b}1"
mdadm --create /dev/md1 --run --level=1 --raid-devices=2 --metadata=1.2 --bitmap=none \
	--assume-clean "${ssd_a}1" "${ssd_b}1" </dev/null
udevadm settle
md_uuid=$(mdadm --detail --export /dev/md1 | sed -n 's/^MD_UUID=//p')
[ -n "$md_uuid" ] || die "no MD_UUID for md1"
printf 'HOMEHOST <system>\nAUTO -all\nARRAY <ignore> UUID=%s\n' "$md_uuid" >/etc/mdadm/mdadm.conf
mdadm --stop /dev/md1
udevadm settle

log "installer: bitmap file $bm_file for md1 (uuid and events from ${ssd_a}1)"
# bitmap_super_t (<linux/raid/md_p.h>'s md-bitmap.h): magic, version 4, the array's
# set_uuid, events, events_cleared, sync_size (sectors), state, chunksize (4 MiB),
# daemon_sleep (5 s), write_behind, sectors_reserved, nodes; zero bits (clean) after it.
# The 1.2 superblock is 4 KiB into the member: set_uuid at 16, size at 80, events at 200.
perl -e 'my ($file, $dev) = @ARGV;
	open(my $d, "<", $dev) or die "$dev: $!\n";
	sysseek($d, 4096, 0) or die; sysread($d, my $sb, 256) == 256 or die "$dev: short read\n";
	unpack("V", $sb) == 0xa92b4efc or die "$dev: no md 1.x superblock\n";
	my $uuid = substr($sb, 16, 16);
	my $size = unpack("Q<", substr($sb, 80, 8));
	my $events = unpack("Q<", substr($sb, 200, 8));
	my $hdr = pack("V V a16 Q< Q< Q< V V V V V V", 0x6d746962, 4, $uuid, $events, $events,
		$size, 0, 4 << 20, 5, 0, 0, 0);
	open(my $f, ">", $file) or die "$file: $!\n";
	print $f $hdr, "\0" x (4096 - length($hdr)) or die;
	close($f) or die "$file: $!\n";
	printf "events %d, size %d sectors\n", $events, $size;' "$bm_file" "${ssd_a}1"
sync
sh /run/md-bitmap-assemble md1 "$bm_file" "${ssd_a}1" "${ssd_b}1"
udevadm settle
while IFS= read -r l; do
	[ -n "$l" ] && log "installer: mdstat $l"
done </proc/mdstat
grep -q "file: $bm_file" /proc/mdstat || die "md1 runs without its bitmap file"

log "installer: LVM: vg0 on $slow and md1"
pvcreate -q "$slow" /dev/md1
vgcreate -q vg0 "$slow" /dev/md1
lvcreate -q -y --type thin-pool -L 3G --poolmetadatasize 32M -n pool vg0 "$slow"
lvcreate -q -y --type cache-pool -L 320M -n cpool vg0 /dev/md1
lvconvert -q -y --type cache --cachemode writeback --cachepool vg0/cpool vg0/pool
lvcreate -q -y -V 3G -T vg0/pool -n root
udevadm settle
lvs -a -o lv_name,segtype,lv_attr,lv_size,pool_lv,data_lv,cache_mode,devices vg0 2>&1 |
	while IFS= read -r l; do log "installer: lvs $l"; done
mkfs.ext4 -q -L root /dev/mapper/vg0-root

log "installer: copying the root file system"
mkdir -p "$target"
mount /dev/mapper/vg0-root "$target"
copy_rootfs "$target"

echo '/dev/mapper/vg0-root / ext4 errors=remount-ro 0 1' >"$target/etc/fstab"
printf 'HOMEHOST <system>\nMAILADDR root\nARRAY <ignore> UUID=%s\n' "$md_uuid" \
	>"$target/etc/mdadm/mdadm.conf"
partuuid() {
	blkid -o value -s PARTUUID "$1"
}
{
	echo "# Read by the initramfs script local-top/md-bitmap (sh)."
	echo "MD=md1"
	echo "BITMAP_DEV=/dev/disk/by-partuuid/$(partuuid "${ssd_a}2")"
	echo "BITMAP_FILE=$bm_file"
	echo "MEMBERS='/dev/disk/by-partuuid/$(partuuid "${ssd_a}1") /dev/disk/by-partuuid/$(partuuid "${ssd_b}1")'"
} >"$target/etc/mdadm/md-bitmap.conf"
while IFS= read -r l; do log "installer: md-bitmap.conf: $l"; done <"$target/etc/mdadm/md-bitmap.conf"
install -m 0755 /run/md-bitmap-assemble "$target/usr/local/sbin/md-bitmap-assemble"

# The initramfs side: the tool, perl for its ioctl, the config, and the script that
# mounts the bitmap's file system and assembles md1 before LVM looks for vg0's PVs.
cat >"$target/etc/initramfs-tools/hooks/md-bitmap" <<'EOF'
#!/bin/sh
# md1's bitmap file: md-bitmap-assemble, perl (its ioctl) and md-bitmap.conf.
PREREQ="mdadm"
prereqs() { echo "$PREREQ"; }
case "$1" in
prereqs) prereqs; exit 0 ;;
esac
. /usr/share/initramfs-tools/hook-functions
copy_exec /usr/bin/perl
copy_exec /usr/local/sbin/md-bitmap-assemble
mkdir -p "$DESTDIR/etc/mdadm"
cp /etc/mdadm/md-bitmap.conf "$DESTDIR/etc/mdadm/md-bitmap.conf"
EOF
cat >"$target/etc/initramfs-tools/scripts/local-top/md-bitmap" <<'EOF'
#!/bin/sh
# Mounts the file system holding md1's write-intent bitmap file on /run/md-bitmap and
# assembles md1 with it (udev's incremental assembly cannot attach a bitmap file).
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in
prereqs) prereqs; exit 0 ;;
esac
. /scripts/functions
. /etc/mdadm/md-bitmap.conf
[ -e "/sys/block/$MD" ] && exit 0
i=0
for dev in $BITMAP_DEV $MEMBERS; do
	while [ ! -b "$dev" ] && [ "$i" -lt 30 ]; do
		sleep 1
		i=$((i + 1))
	done
done
modprobe -q ext4 || true
modprobe -q raid1 || true
mkdir -p "${BITMAP_FILE%/*}"
if ! mount -t ext4 -o rw,noatime "$BITMAP_DEV" "${BITMAP_FILE%/*}"; then
	log_failure_msg "md-bitmap: cannot mount $BITMAP_DEV on ${BITMAP_FILE%/*}"
	exit 0
fi
log_begin_msg "md-bitmap: assembling $MD with bitmap file $BITMAP_FILE"
# shellcheck disable=SC2086
/usr/local/sbin/md-bitmap-assemble "$MD" "$BITMAP_FILE" $MEMBERS
log_end_msg $?
exit 0
EOF
chmod 0755 "$target/etc/initramfs-tools/hooks/md-bitmap" \
	"$target/etc/initramfs-tools/scripts/local-top/md-bitmap"
configure_initramfs "$target"

target_initramfs

log "installer: closing the stack"
umount "$target"
udevadm settle
# Write the cache back (writethrough flushes it) and return to writeback: every cached
# block is clean now, so the next boots start from a known state.
if lvchange -q -y --cachemode writethrough vg0/pool_tdata && lvchange -q -y --cachemode writeback vg0/pool_tdata; then
	log "installer: cache flushed, back to writeback"
else
	log "installer: could not flush the cache through lvchange --cachemode"
fi
lvs -a -o lv_name,cache_mode,cache_used_blocks,cache_dirty_blocks,lv_health_status vg0 2>&1 |
	while IFS= read -r l; do log "installer: lvs $l"; done
vgchange -q -an vg0
mdadm --stop /dev/md1
umount "$bm_dir"
log "installer: done"
