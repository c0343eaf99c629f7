#!/bin/sh
# Fault: a corrupt configuration file in the payload, and the test-only switch that
# makes exitrd act as if systemd had passed an unknown verb ($FAULT, exitrd.fault=verb:...,
# written into the payload's switch file, which exitrd reads only when it is there).
set -eu
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

printf 'TIMEOUT=soon\nCOLOUR=blue\n\377\376garbage without equals\nWIPE_KEYS=maybe\n' \
	>/run/initramfs/exitrd.conf
printf '%s\n' "${FAULT:?}" >/run/initramfs/test-faults-allowed
log "corrupt exitrd.conf and the fault switch in the payload: $FAULT"
