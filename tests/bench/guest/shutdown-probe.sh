#!/bin/sh
# Benchmarks: installed by measure.sh as a systemd-shutdown hook; systemd-shutdown runs it
# just before it pivots into /run/initramfs. Logs MemAvailable and what /run/initramfs holds.
m=$(sed -n 's/^MemAvailable: *\([0-9]*\).*/\1/p' /proc/meminfo)
if [ -d /run/initramfs ]; then
	du=$(du -sk /run/initramfs 2>/dev/null | cut -f1)
else
	du=0
fi
printf 'harness: bench pre-pivot memavail-kib %s runinitramfs-du-kib %s\n' "$m" "$du" >/dev/kmsg
exit 0
