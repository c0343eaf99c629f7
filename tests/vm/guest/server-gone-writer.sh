#!/bin/sh
# Fault for nbd-server-gone and nfs-server-gone (test boot extra, run from /run, cwd /):
# a root-owned process that systemd spares at shutdown (argv[0] starting with '@', like
# nbd-client itself) and that keeps writing to a file on / without syncing. The root
# then holds dirty data and stays writable (systemd cannot remount it read-only) when
# the host freezes the server (NBD or NFS) as systemd switches into the exitrd.
set -eu
log() { printf 'harness: server-gone: %s\n' "$*" >/dev/kmsg; }

log "root: $(findmnt -n -o SOURCE,FSTYPE /)"
cd /
perl -e '$0 = "\@root-writer"; $SIG{TERM} = "IGNORE"; chdir "/";
	open(my $f, ">", "/root/writer") or die "open: $!";
	while (1) {
		syswrite($f, "x" x 4096);
		sysseek($f, 0, 0) if sysseek($f, 0, 1) > (1 << 20);
		select(undef, undef, undef, 0.2);
	}' </dev/null >/dev/null 2>&1 &
pid=$!
# Into the root cgroup (where nbd-client lives too): stopping the harness unit would
# otherwise kill it.
echo "$pid" >/sys/fs/cgroup/cgroup.procs
# Wait until perl has renamed itself (slow under TCG): unmarked, systemd would kill it.
i=0
while [ "$(cut -c1 </proc/"$pid"/cmdline)" != @ ] && [ "$i" -lt 30 ]; do
	sleep 1
	i=$((i + 1))
done
log "writer started: pid $pid, cmdline $(tr '\0' ' ' </proc/"$pid"/cmdline)"
