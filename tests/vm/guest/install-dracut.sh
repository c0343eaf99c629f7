#!/bin/sh
# dracut stage (benchmarks, tests/bench): replace initramfs-tools by Debian's dracut in the
# booted stack, configured for it (LUKS keyfile, MD, LVM, the shutdown module), and save
# the resulting image as $OUT_INITRD. The .debs come from the HARNESS disk: the host
# downloaded them in a chroot of the same rootfs (the guest has no network).
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu
stage_system
# As PID 1 nothing loaded the drivers of the machine's devices (systemd's udev coldplug
# did): load them all by their modalias, as udev would, for dracut's hostonly image
# takes the loaded modules (not only PCI, as the package stage does: ~45 s on a busy
# host, spent in the benchmark stage only).
if [ -e /run/harness-stage-system ]; then
	find /sys/devices -name modalias -exec cat {} + 2>/dev/null | sort -u |
		xargs modprobe -a -b -q 2>/dev/null || :
	log "dracut: modules loaded: $(wc -l </proc/modules)"
fi

kver=$(uname -r)
img=/boot/initrd.img-$kver
before=$(cksum <"$img")

# The configuration goes in first, so that the image the package builds already uses it.
# hostonly and zstd -1 match the initramfs-tools side (MODULES=dep, COMPRESSLEVEL=1).
install -d /etc/dracut.conf.d
cat >/etc/dracut.conf.d/50-exitrd-bench.conf <<'EOF'
hostonly="yes"
add_dracutmodules+=" crypt dm lvm mdraid shutdown "
install_items+=" /etc/keys/root.key /etc/crypttab "
compress="zstd -1 -q"
EOF
log "dracut: config: $(tr '\n' ';' </etc/dracut.conf.d/50-exitrd-bench.conf)"

debs=/run/harness-debs
mkdir -p "$debs"
cp "$HARNESS"/*.deb "$debs"/
log "dracut: installing $(cd "$debs" && echo ./*.deb)"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "$debs"/*.deb; then
	# apt could not do it offline: remove the conflicting initramfs-tools and let dpkg
	# install the set (dracut provides linux-initramfs-tool, which the kernel accepts).
	log "dracut: apt failed, falling back to dpkg"
	dpkg -r --force-depends initramfs-tools
	dpkg -i --force-confold "$debs"/*.deb
fi
rm -rf "$debs"
log "dracut: initramfs-tools now: $(dpkg-query -W -f '${db:Status-Abbrev}' initramfs-tools 2>/dev/null || echo absent)"
log "dracut: dracut-shutdown.service: $(systemctl is-enabled dracut-shutdown.service 2>&1 || true)"

if [ "$(cksum <"$img")" = "$before" ]; then
	log "dracut: $img unchanged by the package, running dracut -f"
	dracut -f "$img" "$kver"
fi
lsinitrd "$img" >/run/lsinitrd.txt
log "dracut: image has $(grep -c . /run/lsinitrd.txt) entries"
for f in shutdown etc/keys/root.key etc/crypttab usr/sbin/mdadm usr/sbin/lvm usr/lib/systemd/systemd-cryptsetup usr/sbin/cryptsetup; do
	if grep -q " $f\$" /run/lsinitrd.txt; then
		log "dracut: image has $f"
	else
		log "dracut: image lacks $f"
	fi
done
lsinitrd -m "$img" 2>/dev/null | tr '\n' ' ' | while IFS= read -r l; do log "dracut: modules: $l"; done
save_initrd / "$OUT_INITRD"
# Leave the root file system clean, as systemd's shutdown did: as PID 1 (stage_system
# ran) the harness only syncs before its forced poweroff, and every later boot of these
# disks would start with a journal to recover.
if [ -e /run/harness-stage-system ]; then
	stage_unmount
	sync
	mount -o remount,ro / || log "dracut: cannot remount / read-only"
fi
log "dracut: done"
