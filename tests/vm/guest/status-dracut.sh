#!/bin/sh
# dracut scenarios (issue 12): what 'exitrd status' says of the builder and the next
# shutdown, and whether dracut's own shutdown unit stood aside (its drop-in from the
# package: ConditionPathExists=!/run/initramfs/exitrd, checked when it started at boot).
set -u
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

if command -v exitrd >/dev/null; then
	rc=0
	exitrd status >/run/status.txt 2>&1 || rc=$?
	log "status exit $rc"
	while IFS= read -r line; do log "status: $line"; done </run/status.txt
else
	log "status: exitrd is not installed"
fi
# The binary exitrd-report.service ran at this boot: the payload's copy in RAM, found by the
# package's build ID, not /usr/sbin/exitrd. Its journal entry (by MESSAGE_ID) names it.
# (Waited for a while: the unit may still be running when this script starts.)
i=0
exe=
while command -v exitrd >/dev/null && [ -z "$exe" ] && [ "$i" -lt 150 ]; do
	exe=$(journalctl -b -o export MESSAGE_ID=877bac54149a40d2bbc38feeccc23379 2>/dev/null |
		grep -a '^EXITRD_BINARY=' | sort -u | tr '\n' ' ') || true
	[ -n "$exe" ] || sleep 0.2
	i=$((i + 1))
done
log "exitrd-report.service ran: ${exe% }"
# exitrd.service stood aside too: the pre-pivot hook had left this build's payload on its
# own mount, so its conditions held it back and no process started (issue 12.5).
log "exitrd.service: $(systemctl show -p LoadState -p ActiveState -p ConditionResult exitrd.service | sort | paste -s -d ' ' -)"
log "dracut-shutdown.service: $(systemctl show -p ActiveState -p ConditionResult dracut-shutdown.service | tr '\n' ' ')"
if [ -e /run/initramfs/.need_shutdown ]; then
	log "dracut: /run/initramfs/.need_shutdown is set"
else
	log "dracut: /run/initramfs/.need_shutdown is not set"
fi
