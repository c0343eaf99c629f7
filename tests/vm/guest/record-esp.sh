#!/bin/sh
# record-esp (issue 14): a machine whose /boot lives on the encrypted root, the ESP its
# only plain file system. /boot is left out of fstab for the shutdown (systemd has both
# unmounted by the switch, so exitrd learns its places from fstab); the ESP stays.
set -eu
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

sed -i 's|^\([^#][^[:space:]]*[[:space:]][[:space:]]*/boot[[:space:]]\)|#exitrd-test: \1|' /etc/fstab
if grep -Eq '^[^#][^[:space:]]*[[:space:]]+/boot[[:space:]]' /etc/fstab ||
	! grep -Eq '^[^#][^[:space:]]*[[:space:]]+/boot/efi[[:space:]]' /etc/fstab; then
	log "record: fstab not as expected: $(tr '\n' '|' </etc/fstab)"
	exit 1
fi
# The mount point such a machine has for its ESP on the root itself (the installer made
# /boot/efi on the /boot partition): the check boot mounts the ESP there from fstab.
rootview=$(mktemp -d)
mount --bind / "$rootview"
mkdir -p "$rootview/boot/efi"
umount "$rootview"
rmdir "$rootview"
log "record: /boot left out of fstab, the ESP on /boot/efi kept"
# The journal entry exitrd-report.service made at this boot about the shutdown before it (that
# of the package stage, which exitrd did not run: no record), found by its MESSAGE_ID,
# with the binary that sent it (EXITRD_BINARY: the payload's copy in RAM, found by its
# build ID).
i=0
while :; do
	entry=$(journalctl -b -o export MESSAGE_ID=877bac54149a40d2bbc38feeccc23379 2>/dev/null |
		grep -aE '^(MESSAGE|PRIORITY|EXITRD_RECORDED|EXITRD_BINARY)=' | sort | tr '\n' ';') || true
	if [ -n "$entry" ] || [ "$i" -ge 150 ]; then
		break
	fi
	sleep 0.2
	i=$((i + 1))
done
log "journal: ${entry:-no entry with the MESSAGE_ID of exitrd}"
