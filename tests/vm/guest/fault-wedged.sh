#!/bin/sh
# Fault: a wedged exitrd (exitrd.fault=hang, honoured only with
# /run/initramfs/test-faults-allowed): it stops after unmounting and no longer feeds the
# shutdown watchdog, which systemd armed for the reboot (qemu's i6300esb, 6 s, reset on
# expiry). The hardware must end it: the guest resets (qemu -no-reboot then exits).
set -eu
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

i=0
while [ ! -e /dev/watchdog0 ] && [ "$i" -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
mkdir -p /run/systemd/system.conf.d
printf '[Manager]\nRebootWatchdogSec=6s\n' >/run/systemd/system.conf.d/exitrd-test-watchdog.conf
systemctl daemon-reexec
log "watchdog: $(ls /dev/watchdog0 2>/dev/null || echo none), RebootWatchdogUSec=$(systemctl show -P RebootWatchdogUSec)"
if [ -d /run/initramfs ]; then
	touch /run/initramfs/test-faults-allowed
	log "fault switch in the payload"
fi
