#!/bin/sh
# Check boot for zfs-luks (PID 1, no systemd, root read-only): the usual checks, then
# the pool's on-disk state. It is imported as another host would (a rescue system, a
# new machine): without -f that only works when the pool was exported at shutdown.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "${HARNESS_LIB:?}"
set -u
sh "${HARNESS_LIB%/*}/check.sh" || log "check.sh failed"

# No udev here: let libdevmapper make the /dev/mapper nodes itself.
DM_DISABLE_UDEV=1
export DM_DISABLE_UDEV
# shellcheck disable=SC2046 # two fields: the UUID and the key file
set -- $(sed -n 's/^tank_crypt[[:space:]]\{1,\}UUID=\([^[:space:]]*\)[[:space:]]\{1,\}\([^[:space:]]*\).*/\1 \2/p' /etc/crypttab)
[ "$#" -eq 2 ] || die "no tank_crypt line in /etc/crypttab"
dev=$(blkid -U "$1") || die "no device with UUID $1"
if [ -e /dev/mapper/tank_crypt ]; then
	log "zfs: tank_crypt already open (by the initramfs)"
else
	cryptsetup open --key-file "$2" "$dev" tank_crypt || die "cannot open $dev"
fi

state=$(zdb -l /dev/mapper/tank_crypt | sed -n 's/^[[:space:]]*state: \([0-9]*\)$/\1/p' | head -n 1)
case "$state" in
0) log "zfs label state=active ($state)" ;;
1) log "zfs label state=exported ($state)" ;;
*) log "zfs label state=other ($state)" ;;
esac

foreign=195936478 # 0x0badc0de
modprobe spl spl_hostid="$foreign"
modprobe zfs
log "zfs: importing as another host: hostid $(printf '%x' "$foreign"), this system's $(hostid)"
zpool import -d /dev/mapper 2>&1 | while IFS= read -r l; do log "zfs scan | $l"; done
if out=$(zpool import -N -o cachefile=none -d /dev/mapper tank 2>&1); then
	log "zfs import as another host without -f: ok"
	if zfs mount tank/data; then
		if cmp -s /srv/tank/marker /root/marker; then
			log "zfs data: marker ok"
		else
			log "zfs data: marker differs: $(cat /srv/tank/marker 2>&1)"
		fi
	else
		log "zfs data: cannot mount tank/data"
	fi
	zpool export tank || log "zfs: cannot export tank"
else
	log "zfs import as another host without -f: failed: $(echo "$out" | tr '\n' ' ')"
fi
cryptsetup close tank_crypt || log "cannot close tank_crypt"
log "zfs check: done"
