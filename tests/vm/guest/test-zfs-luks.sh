#!/bin/sh
# Test boot extra for zfs-luks: the token goes to the dataset too, and a process that
# systemd spares ('@' in argv[0]) keeps its working directory on /srv/tank, so the
# dataset is still mounted (below /oldroot) when the exitrd starts, as a ZFS root would
# be: the exitrd must unmount it before its hook exports the pool.
set -eu
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

log "zfs: hostid $(hostid); pools: $(zpool list -H -o name,health | tr '\t\n' ' ')"
journalctl -b -u zfs-import-cache.service --no-pager -o cat 2>&1 | tail -n 5 |
	while IFS= read -r l; do log "zfs: zfs-import-cache | $l"; done
zpool status tank | while IFS= read -r l; do log "zfs: status | $l"; done
if command -v exitrd >/dev/null; then
	exitrd status 2>&1 | while IFS= read -r l; do log "zfs: exitrd status | $l"; done
fi
cp /root/marker /srv/tank/marker
sync
log "zfs: marker copied to /srv/tank ($(zfs list -H -o name,mounted,mountpoint tank/data | tr '\t' ' '))"

cd /
perl -e '$0 = "\@zfs-holder"; $SIG{TERM} = "IGNORE"; chdir "/srv/tank" or die "chdir: $!";
	sleep 1 while 1;' </dev/null >/dev/null 2>&1 &
pid=$!
echo "$pid" >/sys/fs/cgroup/cgroup.procs
sleep 1
log "zfs: holder started: pid $pid, cwd $(readlink /proc/"$pid"/cwd)"
