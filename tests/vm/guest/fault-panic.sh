#!/bin/sh
# Fault: make exitrd panic, or abort, after unmounting: $FAULT (exitrd.fault=panic or
# exitrd.fault=abort, Scenario.fault) written into the payload's switch file, which
# exitrd reads only when that file is there. The panic hook must still sync and power
# off; the abort goes through exitrd's fatal-signal handler.
set -eu
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

printf '%s\n' "${FAULT:?}" >/run/initramfs/test-faults-allowed
log "fault switch in the payload: $FAULT"
