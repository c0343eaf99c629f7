#!/bin/sh
# Issue 5: 'dpkg --purge exitrd' leaves none of its files, takes the running payload
# out of /run/initramfs, and rebuilds the initramfs without it, so the poweroff that
# follows no longer pivots.
set -eu
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

if ! dpkg-query -W -f='${Status}' exitrd 2>/dev/null | grep -q 'ok installed'; then
	log "purge: exitrd is not installed"
	exit 0
fi
dpkg -L exitrd >/run/exitrd.paths
initrd=/boot/initrd.img-$(uname -r)
log "purge: before: $(wc -l </run/exitrd.paths) paths, $(lsinitramfs "$initrd" | grep -c '^exitrd/') payload files in $initrd, /run/initramfs: $(findmnt -n -o SOURCE,FSTYPE /run/initramfs || echo 'not a mount')"

if ! dpkg --purge exitrd >/run/purge.log 2>&1; then
	while IFS= read -r l; do log "purge: dpkg: $l"; done </run/purge.log
	log "purge: dpkg --purge failed"
	exit 0
fi
problems=0
while IFS= read -r p; do
	# Directories such as /usr/sbin are shared; every file, link and own directory must go.
	if { [ -f "$p" ] || [ -L "$p" ]; } || case $p in *exitrd*) [ -e "$p" ] ;; *) false ;; esac; then
		log "purge: left behind: $p"
		problems=$((problems + 1))
	fi
done </run/exitrd.paths
# The harness's own units are named exitrd-harness*.
find /etc /usr/lib/systemd /var/lib/systemd -name '*exitrd*' ! -name 'exitrd-harness*' >/run/exitrd.left 2>/dev/null || true
while IFS= read -r p; do
	log "purge: left behind: $p"
	problems=$((problems + 1))
done </run/exitrd.left
n=$(lsinitramfs "$initrd" | grep -c -e '^exitrd' -e '/exitrd$' || true)
if [ "$n" -ne 0 ]; then
	log "purge: $initrd still holds $n exitrd entries"
	problems=$((problems + 1))
fi
if findmnt -n /run/initramfs >/dev/null || [ -e /run/initramfs/shutdown ]; then
	log "purge: /run/initramfs still holds an exitrd"
	problems=$((problems + 1))
fi
if [ "$problems" -eq 0 ]; then
	log "purge: clean: no exitrd file, unit or initramfs entry left, /run/initramfs empty"
fi
