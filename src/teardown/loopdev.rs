//! Detaching loop devices, written from `<linux/loop.h>`.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::libc;
use nix::sys::ioctl::ioctl_num_type;

use super::devnode::with_context;

/// `LOOP_CLR_FD`. The header defines it as the literal `0x4C01` on every
/// architecture (not via `_IO`, whose direction bits differ e.g. on powerpc
/// and mips), so it is a literal here too.
const LOOP_CLR_FD: ioctl_num_type = 0x4C01;

/// Detaches the backing file from the loop device `node` (`LOOP_CLR_FD`).
///
/// Fails with `ENXIO` when the device has no backing file. While someone
/// else still has the device open, current kernels do not fail but mark it
/// for automatic detach on last close (so success does not guarantee the
/// device is free yet; `/sys/block/loopN/loop/backing_file` disappears once
/// it is).
pub fn clear_fd(node: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(node)
        .map_err(|e| with_context(e, format!("loop: opening {}", node.display())))?;
    // SAFETY: LOOP_CLR_FD takes no argument: the kernel reads and writes no
    // memory of ours. `file` keeps the descriptor open during the call.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_CLR_FD) };
    Errno::result(ret)
        .map_err(|e| with_context(e.into(), format!("loop: detaching {}", node.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::devnode::{abi_probe, errno};
    use super::*;

    #[test]
    fn constants_match_kernel_headers() {
        abi_probe::check(&[("LOOP_CLR_FD", abi_probe::ioctl_code(LOOP_CLR_FD))]);
    }

    #[test]
    fn errors_name_the_node() {
        let err = clear_fd(Path::new("/nonexistent/loop9")).unwrap_err();
        assert_eq!(errno(&err), Some(libc::ENOENT));
        assert!(err.to_string().contains("/nonexistent/loop9"), "{err}");

        // Not a loop device: the kernel refuses the ioctl, nothing changes.
        let err = clear_fd(Path::new("/dev/null")).unwrap_err();
        assert!(
            err.to_string().contains("loop: detaching /dev/null"),
            "{err}"
        );
        assert!(errno(&err).is_some(), "{err}");
    }
}
