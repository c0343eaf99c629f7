#!/bin/sh
# Benchmarks (tests/bench/bench.py): run as the test boot's extra.sh (after test.sh wrote
# the marker), from / with the HARNESS disk still mounted. Logs what the running system
# holds for its shutdown and installs the probes the shutdown itself reports through.
# Every figure is one kmsg line "harness: bench KEY VALUE..." (timestamped by the kernel).
# shellcheck source-path=SCRIPTDIR/../../vm/guest
# shellcheck source=../../vm/guest/lib.sh
. "${HARNESS_LIB:?}"
set -eu

memavail() {
	while read -r k v _; do
		[ "$k" = MemAvailable: ] && echo "$v" && return
	done </proc/meminfo
}

# /run/initramfs during uptime: what its files use (du), and the mount it is on.
if [ -d /run/initramfs ]; then
	log "bench runinitramfs-du-kib $(du -sk /run/initramfs | cut -f1)"
fi
log "bench runinitramfs-mount $(findmnt -n -o TARGET,FSTYPE,SIZE,USED,OPTIONS -T /run/initramfs 2>/dev/null | tr -s ' ' || echo none)"
log "bench run-mount $(findmnt -n -o OPTIONS /run)"
log "bench memavail-uptime-kib $(memavail)"
[ -e /run/initramfs/.need_shutdown ] && log "bench dracut-need-shutdown yes"

# Boot cost in the booted system: how long the units of each setup took to start (us),
# how long their process ran, and whether they ran at all (dracut-shutdown.service stands
# aside where exitrd's payload is: ConditionResult=no).
for u in exitrd.service exitrd-report.service dracut-shutdown.service; do
	s=$(systemctl show -p LoadState --value "$u")
	[ "$s" = loaded ] || continue
	log "bench unit $u $(systemctl show -p ActiveState -p ConditionResult \
		-p InactiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic \
		-p ExecMainStartTimestampMonotonic -p ExecMainExitTimestampMonotonic "$u" | tr '\n' ' ')"
done

# What exitrd's checks cost, run again in the booted system (warm), beside a process that
# does nothing: ms of `exitrd status` (exitrd-report.service's check), of
# `exitrd status --pivot-only` (exitrd.service's, on the boots its conditions let it run),
# of the payload binary's `--version` and of /bin/true, five rounds (one line each; the
# bench takes the median: single runs under TCG are noisy).
elapsed_ms() {
	t0=$(date +%s%N)
	"$@" >/dev/null 2>&1 || :
	t1=$(date +%s%N)
	echo $(((t1 - t0) / 1000000))
}
if [ -x /usr/sbin/exitrd ] && [ -x /run/initramfs/exitrd ]; then
	for _ in 1 2 3 4 5; do
		log "bench cmd-ms true $(elapsed_ms /bin/true) version $(elapsed_ms /run/initramfs/exitrd --version) status $(elapsed_ms /usr/sbin/exitrd status) pivot $(elapsed_ms /usr/sbin/exitrd status --pivot-only)"
	done
fi

# The shutdown: a systemd-shutdown hook logs memory and /run/initramfs right before the
# pivot (after dracut-shutdown.service unpacked its image there, if it did).
install -D -m 0755 "$HARNESS/shutdown-probe.sh" /usr/lib/systemd/system-shutdown/exitrd-bench-probe

# dracut unpacks its image into /run/initramfs when dracut-shutdown.service stops: the
# same command, with a line before and after it (timestamps, and the size it unpacked).
if [ -x /usr/lib/dracut/dracut-initramfs-restore ]; then
	d=/run/systemd/system/dracut-shutdown.service.d
	mkdir -p "$d"
	cat >"$d/bench.conf" <<'UNIT'
[Service]
ExecStop=
ExecStop=/bin/sh -c 'echo "harness: bench restore-start" >/dev/kmsg'
ExecStop=/usr/lib/dracut/dracut-initramfs-restore
ExecStop=/bin/sh -c 'echo "harness: bench restore-end du-kib $(du -sk /run/initramfs | cut -f1)" >/dev/kmsg'
UNIT
	systemctl daemon-reload
	log "bench restore probe installed"
fi
