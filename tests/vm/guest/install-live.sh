#!/bin/sh
# Live medium builder for scenario live. Unlike the other install-*.sh scripts it runs on
# the host, in a chroot of a copy of the cached rootfs (as live-build does; the cached
# rootfs itself is never touched), with its own PID and mount namespaces and only /proc
# mounted. It installs live-boot, and the package under test when $LIVE_DEB names it, and
# rebuilds the initramfs; vm.py then squashes the tree into live/filesystem.squashfs.
set -eu
export DEBIAN_FRONTEND=noninteractive
log() {
	printf 'install-live: %s\n' "$*"
}

# Nothing may start a service in the chroot.
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d

# The image is built on the host, whose hardware says nothing about the machine the
# medium boots on, so never MODULES=dep. The scenario asks for MODULES=list (MODULES=most
# makes a 47 MB initrd whose unpacking alone takes half a minute under TCG): live-boot's
# hook adds loop, squashfs, overlay and ext4; the VM's disks need virtio_blk.
for l in ${INITRAMFS_CONF:-}; do
	echo "$l" >>/etc/initramfs-tools/initramfs.conf
done
echo virtio_blk >>/etc/initramfs-tools/modules

# One initramfs build at the end instead of one per package trigger.
conf=/etc/initramfs-tools/update-initramfs.conf
sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$conf"
log "apt-get install live-boot"
apt-get update -q
apt-get install -y -q --no-install-recommends live-boot live-boot-initramfs-tools
if [ -n "${LIVE_DEB:-}" ]; then
	log "installing $(dpkg-deb -f "$LIVE_DEB" Package Version | tr '\n' ' ')"
	dpkg -i "$LIVE_DEB"
fi
sed -i 's/^update_initramfs=.*/update_initramfs=yes/' "$conf"
log "update-initramfs"
update-initramfs -u -k all
lsinitramfs /boot/initrd.img-* | grep -E 'scripts/live$|exitrd' | while IFS= read -r f; do
	log "initrd has $f"
done

apt-get clean
rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d
log "done"
