#!/bin/sh
# Test boot extra for nfs-root (run from /run, cwd /): how the root is served, and what
# 'exitrd status' says of the network it needs (issue 13.4).
log() { printf 'harness: nfs: %s\n' "$*" >/dev/kmsg; }
log "root: $(findmnt -n -o SOURCE,FSTYPE /)"
for c in /run/net-*.conf; do
	[ -r "$c" ] && log "net: $(grep -E '^(DEVICE|IPV4ADDR)=' "$c" | tr '\n' ' ')"
done
if command -v exitrd >/dev/null; then
	exitrd status 2>&1 | grep -F '(nfs from' | while IFS= read -r line; do
		log "status: $line"
	done
else
	log "status: exitrd is not installed"
fi
