#!/bin/sh
# Test boot: leave a marker on the root file system, optionally capture a fixture
# of the storage topology, then let the harness power off (or reboot) normally.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu

# Log the block device state just before the pivot (systemd runs system-shutdown hooks).
install -D -m 0755 "$HARNESS/shutdown-diag.sh" /usr/lib/systemd/system-shutdown/exitrd-harness-diag

printf '%s\n' "$TOKEN" >/root/marker
sync
log "marker written"
if [ -d /sys/firmware/efi ]; then
	log "firmware: UEFI"
else
	log "firmware: BIOS (no /sys/firmware/efi)"
fi
if [ -x /run/initramfs/shutdown ]; then
	log "exitrd in place: /run/initramfs/shutdown is executable"
	log "payload: $(du -sk /run/initramfs | cut -f1) KiB in /run/initramfs"
else
	log "no executable /run/initramfs/shutdown"
fi
if [ "${CAPTURE:-0}" = 1 ]; then
	capture_fixture "$HARNESS/out/fixture"
fi
# Scenario.watchdog: the shutdown watchdog, as a production machine may have it: qemu's
# i6300esb (reset on expiry), armed by systemd with RebootWatchdogSec=$WATCHDOG (systemd
# arms it for reboot and kexec, not for power-off). No D-Bus in the test image: a
# drop-in, and systemd re-executes to read it.
if [ -n "${WATCHDOG:-}" ]; then
	i=0
	while [ ! -e /dev/watchdog0 ] && [ "$i" -lt 100 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	mkdir -p /run/systemd/system.conf.d
	printf '[Manager]\nRebootWatchdogSec=%s\n' "$WATCHDOG" >/run/systemd/system.conf.d/exitrd-test-watchdog.conf
	systemctl daemon-reexec
	log "watchdog: $(ls /dev/watchdog0 2>/dev/null || echo none), RebootWatchdogUSec=$(systemctl show -P RebootWatchdogUSec)"
fi
# A scenario's fault injection (Scenario.test_extra), run last, from the copy in /run
# (the HARNESS disk is unmounted before the poweroff; leave nothing open on it).
extra=${HARNESS_LIB%/*}/extra.sh
if [ -f "$extra" ]; then
	log "running the scenario's extra.sh"
	(cd / && FAULT=${FAULT:-} sh "$extra")
fi
# Scenario.verb: the harness always asks for "systemctl poweroff"; for a reboot, make
# poweroff.target an alias of reboot.target for the rest of this boot (/run is not kept).
if [ "${VERB:-poweroff}" = reboot ]; then
	mkdir -p /run/systemd/system
	ln -sf /usr/lib/systemd/system/reboot.target /run/systemd/system/poweroff.target
	systemctl daemon-reload
	log "poweroff.target now leads to $(systemctl show -P Id poweroff.target)"
fi
log "test: done"
