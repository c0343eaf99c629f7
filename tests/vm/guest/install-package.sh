#!/bin/sh
# Package stage: install exitrd.deb from the HARNESS disk into the booted stack and
# save the resulting initramfs (built by initramfs-tools or dracut) as $OUT_INITRD.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu
# As PID 1 after dracut's systemd initrd the harness gets no PATH (initramfs-tools' init
# exports one), and dpkg refuses to run without it.
export PATH="${PATH:-/usr/sbin:/usr/bin:/sbin:/bin}"
stage_system
# As PID 1 nothing loaded the drivers of the machine's PCI devices (systemd's udev
# coldplug did), and MODULES=dep looks at what they bring: sd_mod goes into the image
# when the SCSI bus exists, which ata_piix (the PATA controller) registers. Loaded by
# modalias, as udev does; only PCI: every device under /sys took 45 s on a busy host,
# and the rest (input, platform, ACPI) changes nothing MODULES=dep reads here.
# dracut's hostonly image takes the loaded modules: there every device's driver is
# loaded (as the dracut stage did), not only PCI.
if [ -e /run/harness-stage-system ]; then
	if command -v dracut >/dev/null; then
		find /sys/devices -name modalias -exec cat {} + 2>/dev/null
	else
		cat /sys/bus/pci/devices/*/modalias
	fi | sort -u | xargs modprobe -a -b -q 2>/dev/null || :
	log "package: modules loaded: $(wc -l </proc/modules)"
fi

kver=$(uname -r)
before=$(cksum </boot/initrd.img-"$kver")
log "package: installing $(dpkg-deb -f "$HARNESS/exitrd.deb" Package Version | tr '\n' ' ')"
dpkg -i "$HARNESS/exitrd.deb"
after=$(cksum </boot/initrd.img-"$kver")
if [ "$before" = "$after" ]; then
	if command -v update-initramfs >/dev/null; then
		log "package: initramfs unchanged by the package, running update-initramfs -u"
		update-initramfs -u -k "$kver"
	else
		log "package: initramfs unchanged by the package, running dracut -f"
		dracut -f /boot/initrd.img-"$kver" "$kver"
	fi
fi
if command -v dracut >/dev/null; then
	lsinitrd /boot/initrd.img-"$kver" >/run/lsinitrd.txt
	for f in exitrd/exitrd exitrd/shutdown pre-pivot/90-exitrd-prepare.sh; do
		if grep -Eq "[ /]$f( ->|\$)" /run/lsinitrd.txt; then
			log "package: dracut image has $f"
		else
			log "package: dracut image lacks $f"
		fi
	done
fi
save_initrd / "$OUT_INITRD"
# Leave the root file system clean, as systemd's shutdown did: as PID 1 (stage_system
# ran) the harness only syncs before its forced poweroff, and every later boot of these
# disks would start with a journal to recover.
if [ -e /run/harness-stage-system ]; then
	stage_unmount
	sync
	mount -o remount,ro / || log "package: cannot remount / read-only"
fi
log "package: done"
