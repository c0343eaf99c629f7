#!/bin/sh
# Fault: a root-owned process that systemd spares at shutdown (argv[0] starts with '@',
# the mark of storage daemons such as nbd-client), ignores SIGTERM, and keeps its
# working directory and an open file on /. exitrd must name it, end it, and still
# unmount the root.
set -eu
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

cd /
perl -e '$0 = "\@holder"; $SIG{TERM} = "IGNORE"; chdir "/";
	open(my $held, ">", "/root/held") or die "open: $!";
	print $held "held\n"; sleep 1 while 1;' </dev/null >/dev/null 2>&1 &
pid=$!
# Into the root cgroup: stopping the harness unit would otherwise kill it, as the unit's
# processes are killed whatever their name. Storage daemons started from the initramfs
# live there too.
echo "$pid" >/sys/fs/cgroup/cgroup.procs
sleep 1
log "holder started: pid $pid, cmdline $(tr '\0' ' ' </proc/"$pid"/cmdline)"
