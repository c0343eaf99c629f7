#!/bin/sh
# Issue 5, repair path: install the package on the running system (booted from an
# initramfs without the payload) and power off without a reboot in between. The package
# starts exitrd.service, which builds /run/initramfs from the installed files.
set -eu
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

# shellcheck disable=SC1091 # the host's choices for this boot (CONTROL=1: no package)
. /mnt/harness/env
deb=/mnt/harness/exitrd.deb
if [ "${CONTROL:-0}" = 1 ]; then
	log "control: nothing to install"
else
	[ -f "$deb" ] || { log "FAIL: no exitrd.deb on the HARNESS disk"; exit 1; }
	# The initramfs dpkg's trigger would rebuild is for the next boot, which this test
	# never makes (the check boot gets the stage's image): the rebuild took 4.5 of this
	# boot's 6.5 minutes under emulation. The package stages and purge rebuild it.
	sed -i 's/^update_initramfs=.*/update_initramfs=no/' /etc/initramfs-tools/update-initramfs.conf
	log "update-initramfs: $(grep '^update_initramfs=' /etc/initramfs-tools/update-initramfs.conf)"
	# Through log, a line per write: one open of /dev/kmsg passes only 10 lines per 5 s.
	DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >/run/dpkg.out 2>&1 || rc=$?
	while IFS= read -r line; do log "dpkg: $line"; done </run/dpkg.out
	[ "${rc:-0}" = 0 ] || { log "FAIL: dpkg -i (exit $rc)"; exit 1; }
fi
unit_state() {
	systemctl show -p LoadState -p ActiveState -p ConditionResult exitrd.service | sort | paste -s -d ' ' -
}
# The package started exitrd.service, and its conditions let it run: /run/initramfs held
# no payload (this boot's initramfs carried none).
log "exitrd.service: $(unit_state)"
rc=0
: >/run/status.json
if command -v exitrd >/dev/null; then
	exitrd status --json >/run/status.json 2>/run/status.err || rc=$?
	while IFS= read -r line; do log "status stderr: $line"; done </run/status.err
else
	rc=127
fi
log "status before poweroff: exit $rc"
while IFS= read -r line; do log "status: $line"; done </run/status.json

# The upgrade path: /run/initramfs holds an older exitrd on its own mount (as after an
# upgrade, until a new initramfs is booted) and the package's postinst restarts
# exitrd.service. Its conditions (no payload of the installed build ID) must let it run,
# and its repair must put the installed build back before this boot's poweroff.
pivot_check() {
	rc=0
	exitrd status --pivot-only >/run/pivot.txt 2>&1 || rc=$?
	log "upgrade: $1: pivot check exit $rc"
	while IFS= read -r line; do log "upgrade: $1: $line"; done </run/pivot.txt
}
if command -v exitrd >/dev/null; then
	older=/run/exitrd-older
	mkdir -p "$older"
	printf '#!/bin/sh\necho "exitrd 0.0.1"\n' >"$older/exitrd"
	chmod 0755 "$older/exitrd"
	ln -sf exitrd "$older/shutdown"
	exitrd prepare --payload "$older" >/run/older.out 2>&1 ||
		log "FAIL: the older payload not prepared: $(cat /run/older.out)"
	pivot_check "older payload"
	# The same check with its output in the journal, as a unit's is (systemd-cat sets
	# $JOURNAL_STREAM as systemd does for a unit; this guest has no D-Bus for systemd-run):
	# the warning carries the journal's warning priority there, and no "<4>" on a file.
	systemd-cat -t exitrd-older-check /usr/sbin/exitrd status --pivot-only || :
	i=0
	warning=
	while [ -z "$warning" ] && [ "$i" -lt 25 ]; do
		warning=$(journalctl -b -q -t exitrd-older-check -p warning -o cat | grep -m 1 WARNING) || :
		[ -n "$warning" ] || sleep 0.2
		i=$((i + 1))
	done
	log "upgrade: journal warning: $warning"
	systemctl restart exitrd.service || log "upgrade: systemctl restart exitrd.service failed"
	log "upgrade: exitrd.service: $(unit_state)"
	pivot_check "after the restart"
else
	log "upgrade: exitrd is not installed"
fi
