#!/bin/sh
# NFS root (issue 13): the tree a diskless machine mounts as / with initramfs-tools'
# boot=nfs (klibc's nfsmount, NFSv3). Runs on the host in a chroot of a copy of the cached
# rootfs, as install-live.sh does (own PID and mount namespaces, only /proc mounted);
# vm.py serves the result with nfs-ganesha. Installs the package under test when
# $EXITRD_DEB names it, and builds the initramfs either way.
set -eu
export DEBIAN_FRONTEND=noninteractive
log() {
	printf 'install-nfs-root: %s\n' "$*"
}

# Nothing may start a service in the chroot.
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d

# Built on the host, so never MODULES=dep; MODULES=list keeps the image small (most
# would be 47 MB, half a minute of unpacking under TCG): the NIC and the NFS client, and
# virtio_blk for the HARNESS disk (the check boot runs the harness as PID 1: no udev).
for l in ${INITRAMFS_CONF:-}; do
	echo "$l" >>/etc/initramfs-tools/initramfs.conf
done
printf '%s\n' virtio_net nfs nfsv3 virtio_blk >>/etc/initramfs-tools/modules
# The root comes from the initramfs (boot=nfs nfsroot=...); nothing else to mount.
printf '# / is NFS, mounted by the initramfs (boot=nfs)\n' >/etc/fstab

conf=/etc/initramfs-tools/update-initramfs.conf
sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$conf"
if [ -n "${EXITRD_DEB:-}" ]; then
	log "installing $(dpkg-deb -f "$EXITRD_DEB" Package Version | tr '\n' ' ')"
	dpkg -i "$EXITRD_DEB"
fi
sed -i 's/^update_initramfs=.*/update_initramfs=yes/' "$conf"
log "update-initramfs"
update-initramfs -u -k all
lsinitramfs /boot/initrd.img-* | grep -E 'scripts/nfs$|nfsmount$|exitrd' | while IFS= read -r f; do
	log "initrd has $f"
done
rm -f /usr/sbin/policy-rc.d
log "done"
