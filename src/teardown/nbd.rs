//! Disconnecting network block devices, written from `<linux/nbd.h>`.
//!
//! Once the file systems on an NBD device are unmounted, exitrd asks the kernel to say
//! goodbye to the server (`NBD_DISCONNECT`: an `NBD_CMD_DISC` request, sent without
//! waiting for an answer) and to drop the socket (`NBD_CLEAR_SOCK`), which is what
//! `nbd-client -d` does. Neither waits for the server, so a server that is gone costs
//! nothing here. The `nbd-client` process that handed the socket to the kernel (spared
//! until now by its `@` mark) then returns from `NBD_DO_IT` and exits.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::ioctl::ioctl_num_type;

use super::devnode::{node_for, retry_for, with_context};
use crate::topology::block::nbd_connected;

/// `_IO(0xab, 8)` and `_IO(0xab, 4)` in `<linux/nbd.h>`.
const NBD_IOCTL: u8 = 0xab;
const NBD_DISCONNECT: ioctl_num_type = nix::request_code_none!(NBD_IOCTL, 8);
const NBD_CLEAR_SOCK: ioctl_num_type = nix::request_code_none!(NBD_IOCTL, 4);

/// How long the kernel may take to show a disconnected device in sysfs.
const SETTLE: Duration = Duration::from_secs(2);

/// Disconnects the NBD device `kernel_name` (number `dev`) and waits up to `SETTLE` for
/// the kernel to show it disconnected. `sys_root` is where sysfs is mounted (`/sys`; a
/// fixture in tests). Nothing is flushed first: the file systems on it are unmounted (and
/// flushed), so nothing is left to write.
pub fn disconnect(
    sys_root: &Path,
    kernel_name: &str,
    (major, minor): (u32, u32),
) -> io::Result<()> {
    let node = node_for(kernel_name, major, minor)?;
    disconnect_node(&node, &sys_root.join("class/block"), kernel_name, SETTLE)
}

/// Disconnects the NBD device `node` (`name` in `class_dir`) and waits up to `settle` for
/// the kernel to show it disconnected.
///
/// The kernel disconnects a device whatever uses it, and a file system still mounted on
/// it would lose its unwritten data. So the device is opened exclusively first: that
/// fails with `EBUSY` while a file system, a swap area or a stacked device (DM, MD)
/// claims it. `nbd-client`'s own descriptor is not exclusive.
fn disconnect_node(node: &Path, class_dir: &Path, name: &str, settle: Duration) -> io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_EXCL)
        .open(node)
        .map_err(|e| {
            let what = if e.raw_os_error() == Some(libc::EBUSY) {
                format!("nbd: {} is still in use, not disconnected", node.display())
            } else {
                format!("nbd: opening {}", node.display())
            };
            with_context(e, what)
        })?;
    for (code, what) in [
        (NBD_DISCONNECT, "disconnect"),
        (NBD_CLEAR_SOCK, "clear-sock"),
    ] {
        // SAFETY: both ioctls take no argument: the kernel reads and writes no memory
        // of ours. `file` keeps the descriptor open during the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), code) };
        Errno::result(ret)
            .map_err(|e| with_context(e.into(), format!("nbd: {what} on {}", node.display())))?;
    }
    drop(file);
    retry_for(
        settle,
        || {
            if nbd_connected(class_dir, name) {
                Err(io::Error::other(
                    "disconnect sent, but the device still has its size (a user holds it open)",
                ))
            } else {
                Ok(())
            }
        },
        |_| true,
    )
}

#[cfg(test)]
mod tests {
    use super::super::devnode::{abi_probe, errno};
    use super::*;

    #[test]
    fn constants_match_kernel_headers() {
        abi_probe::check(&[
            ("NBD_DISCONNECT", abi_probe::ioctl_code(NBD_DISCONNECT)),
            ("NBD_CLEAR_SOCK", abi_probe::ioctl_code(NBD_CLEAR_SOCK)),
        ]);
    }

    #[test]
    fn errors_name_the_node() {
        let class_dir = Path::new("/nonexistent");
        let err = disconnect_node(
            Path::new("/nonexistent/nbd9"),
            class_dir,
            "nbd9",
            Duration::ZERO,
        )
        .unwrap_err();
        assert_eq!(errno(&err), Some(libc::ENOENT));
        assert!(err.to_string().contains("/nonexistent/nbd9"), "{err}");

        // Not an NBD device: the kernel refuses the ioctl.
        let err =
            disconnect_node(Path::new("/dev/null"), class_dir, "null", Duration::ZERO).unwrap_err();
        assert!(
            err.to_string().contains("nbd: disconnect on /dev/null"),
            "{err}"
        );
    }
}
