#!/bin/bash
# dracut module of exitrd: puts the shutdown payload into the image (the same payload
# initramfs-tools' hook builds) and a pre-pivot hook that moves it to a dedicated exec
# tmpfs on /run/initramfs, where systemd-shutdown finds it. dracut's own shutdown
# (dracut-shutdown.service unpacking the image at shutdown) then stands aside: see the
# drop-in /usr/lib/systemd/system/dracut-shutdown.service.d/exitrd.conf and exitrd(8).
# To build images without it: omit_dracutmodules+=" exitrd " in /etc/dracut.conf.d/.

# called by dracut: included by default wherever the package is installed
check() {
    [[ -x /usr/sbin/exitrd && -x /usr/lib/exitrd/build-payload ]] || return 1
    return 0
}

# called by dracut
depends() {
    return 0
}

# called by dracut
install() {
    # Never fails the image build (warnings only): an image without the payload still
    # boots, and dracut's own shutdown then stays in place.
    /usr/lib/exitrd/build-payload "${initdir:?}"
    inst_hook pre-pivot 90 "${moddir:?}/exitrd-prepare.sh"
}
