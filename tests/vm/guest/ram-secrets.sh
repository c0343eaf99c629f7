#!/bin/sh
# RAM scenarios (Scenario.ram): plant what must be gone from the guest's RAM once it has
# powered off or reset, and tell the host how to recognise it.
# - The LUKS volume key of every crypttab entry with a key file, read from its header
#   (luksDump --dump-volume-key): the host counts the whole key and each half in the dump
#   (aes-xts uses two keys; the kernel's AES key schedules begin with the raw key).
# - A pattern of 4096-byte records, each repeating "XRD:<seed>:<record number>;", made
#   here from a random seed (no script holds it): 32 MiB in a file directly in /run (a
#   tmpfs) and 32 MiB in /root (the root file system's page cache, written back).
# Lines "harness: ram: ..." carry the key (hex) and the seeds; the kernel log keeps them
# as text, which the host's byte search cannot mistake for the secrets themselves.
set -eu
log() { printf 'harness: ram: %s\n' "$*" >/dev/kmsg; }

if [ -r /etc/crypttab ] && command -v cryptsetup >/dev/null; then
	while read -r name source keyfile _; do
		case "$name" in '' | '#'*) continue ;; esac
		[ -r "$keyfile" ] || continue
		case "$source" in
		UUID=*) dev=$(blkid -U "${source#UUID=}") || continue ;;
		*) dev=$source ;;
		esac
		key=$(cryptsetup luksDump --dump-volume-key --batch-mode --key-file "$keyfile" "$dev" |
			awk '/MK dump:/ { f = 1; sub(/.*MK dump:/, "") }
			     f && /:/ && !/MK dump/ { f = 0 }
			     f { gsub(/[^0-9a-fA-F]/, ""); k = k $0 }
			     END { print tolower(k) }')
		[ -n "$key" ] && log "volume key of $name: $key"
	done </etc/crypttab
fi

records=8192
pattern() {
	awk -v s="$1" -v n="$records" 'BEGIN {
		dots = "."
		while (length(dots) < 4096) dots = dots dots
		for (p = 0; p < n; p++) {
			u = sprintf("XRD:%s:%08d;", s, p)
			# c copies of u (the most that leave room to pad to 4095 and the
			# newline), built by doubling: a few joins a record, not 180 (under
			# emulation the one-by-one loop took 17 s of every RAM boot).
			c = int(4095 / length(u))
			line = ""
			for (b = u; c > 0; c = int(c / 2)) {
				if (c % 2) line = line b
				b = b b
			}
			print line substr(dots, 1, 4095 - length(line))
		}
	}'
}
seed() { od -An -N8 -tx1 /dev/urandom | tr -d ' \n'; }
tmpfs_seed=$(seed)
root_seed=$(seed)
pattern "$tmpfs_seed" >/run/exitrd-ram-pattern
pattern "$root_seed" >/root/exitrd-ram-pattern
sync
log "pattern tmpfs /run/exitrd-ram-pattern seed $tmpfs_seed records $records"
log "pattern page-cache /root/exitrd-ram-pattern seed $root_seed records $records"
