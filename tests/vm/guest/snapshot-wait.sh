#!/bin/sh
# run.sh of a booted snapshot (tests/vm/snapshot.py): the guest has booted; the host saves
# its state once this says so, and every run restores that state with its own disk in the
# slot $RUN_DEV (blank when the snapshot was taken). This waits for that disk, mounts it
# over /mnt/harness and runs its run.sh as the harness would have at boot.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -u

log "snapshot point: booted, waiting for the run's disk in $RUN_DEV"
# The slot was read (blank) at boot: drop what the kernel cached of it before each look.
while :; do
	blockdev --flushbufs "$RUN_DEV" 2>/dev/null || true
	[ "$(blkid -p -s LABEL -o value "$RUN_DEV" 2>/dev/null)" = HARNESS ] && break
	sleep 0.2
done
log "snapshot: restored; the run's disk is in $RUN_DEV"
mount "$RUN_DEV" /mnt/harness || die "cannot mount $RUN_DEV"
work=/run/harness-run
mkdir -p "$work"
cp /mnt/harness/*.sh "$work"/
rc=0
HARNESS=/mnt/harness HARNESS_LIB=$work/lib.sh sh "$work/run.sh" || rc=$?
sync
umount /mnt/harness || log "cannot unmount the run's disk"
exit "$rc"
