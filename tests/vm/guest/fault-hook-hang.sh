#!/bin/sh
# Fault: an admin's exitrd hook that never returns, added the documented way
# (/etc/exitrd/hooks/STAGE/) and put in place with 'exitrd prepare'. exitrd must kill it
# after the step timeout and finish the shutdown (a reboot), feeding the watchdog all along.
set -eu
log() { printf 'harness: %s\n' "$*" >/dev/kmsg; }

# The shutdown watchdog (Scenario.watchdog, set up by test.sh: 6 s) is less than the
# hook's 10 s: the machine reboots cleanly only if exitrd keeps feeding it while it
# waits for the hook.
if ! command -v exitrd >/dev/null; then
	log "control: no exitrd to put the hook in place"
	exit 0
fi
install -d /etc/exitrd/hooks/unmounted
cat >/etc/exitrd/hooks/unmounted/50-hang <<'HOOK'
#!/bin/sh
echo "50-hang: looping forever"
while :; do :; done
HOOK
chmod 0755 /etc/exitrd/hooks/unmounted/50-hang
exitrd prepare 2>/run/prepare.err || log "exitrd prepare failed"
while IFS= read -r line; do log "prepare: $line"; done </run/prepare.err
if [ -x /run/initramfs/hooks/unmounted/50-hang ] && [ -x /run/initramfs/bin/sh ]; then
	log "hang hook in the payload, with /bin/sh"
else
	log "FAIL: the hang hook is not in the payload"
fi
