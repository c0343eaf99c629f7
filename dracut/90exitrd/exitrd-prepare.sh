#!/bin/sh
# exitrd (dracut pre-pivot hook, sourced by dracut): move the shutdown payload to a
# dedicated exec tmpfs on /run/initramfs. The design does not rely on the exec /run of
# dracut's systemd initrd: the tmpfs is exitrd's own, as under initramfs-tools. Files
# dracut keeps there (its logs) are copied into it. A failure never stops the boot.
if [ -x /exitrd/exitrd ]; then
    /exitrd/exitrd prepare --payload /exitrd --target /run/initramfs \
        || echo "exitrd: warning: /run/initramfs not prepared; dracut's own shutdown stays in place" >&2
fi
