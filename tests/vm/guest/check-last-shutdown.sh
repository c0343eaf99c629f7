#!/bin/sh
# Check boot of the shutdown-record scenarios (Scenario.check_extra, run as run.sh):
# the record the last shutdown left on /boot, and what `exitrd status` makes of it;
# then the common checks (check.sh).
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -eu

mount /boot || log "record: cannot mount /boot"
mount /boot/efi || log "record: cannot mount /boot/efi"
for f in /boot/exitrd/last-shutdown.json /boot/efi/EFI/exitrd/last-shutdown.json; do
	if [ -r "$f" ]; then
		while IFS= read -r l; do
			log "record $f: $l"
		done <"$f"
	else
		log "record: no $f"
	fi
done
if [ -x /usr/sbin/exitrd ]; then
	line=$(/usr/sbin/exitrd status 2>&1 | tail -n 1) || true
	log "status: $line"
	if /usr/sbin/exitrd status --json 2>/dev/null | grep -q '"recorded": true'; then
		log "status json: recorded true"
	else
		log "status json: recorded false"
	fi
else
	log "status: exitrd is not installed"
fi
umount /boot/efi || true
umount /boot || true

sh "${HARNESS_LIB%/*}/check.sh"
