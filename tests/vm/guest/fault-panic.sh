#!/bin/sh
# Fault: make exitrd panic after unmounting (exitrd.fault=panic on the command line,
# honoured only with /run/initramfs/test-faults-allowed present). The panic hook must
# still sync and power off.
set -eu
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

touch /run/initramfs/test-faults-allowed
log "fault switch in the payload"
