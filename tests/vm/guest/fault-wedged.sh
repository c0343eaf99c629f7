#!/bin/sh
# Fault: a wedged exitrd ($FAULT, exitrd.fault=hang, written into the payload's switch
# file): it stops after unmounting and no longer feeds the shutdown watchdog, which
# systemd armed for the reboot (qemu's i6300esb, 6 s, reset on expiry; Scenario.watchdog,
# set up by test.sh). The hardware must end it: the guest resets (qemu -no-reboot then
# exits).
set -eu
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

if [ -d /run/initramfs ]; then
	printf '%s\n' "${FAULT:?}" >/run/initramfs/test-faults-allowed
	log "fault switch in the payload"
fi
