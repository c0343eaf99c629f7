//! Detaching loop devices, written from `<linux/loop.h>`.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::libc;
use nix::sys::ioctl::ioctl_num_type;

use super::devnode::{flush, node_for, with_context};

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
fn clear_fd(node: &Path) -> io::Result<()> {
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

/// Detaches the loop device `kernel_name` (number `dev`) for good: flushes it, clears its
/// backing file and checks that it let go. `sys_root` is where sysfs is mounted (`/sys`;
/// a fixture in tests).
///
/// A loop device still in use is only marked to detach on its last close: that is not
/// done yet, and not progress worth another pass, so it is an error.
pub fn detach(sys_root: &Path, kernel_name: &str, (major, minor): (u32, u32)) -> io::Result<()> {
    let node = node_for(kernel_name, major, minor)?;
    flush(&node);
    clear_fd(&node)?;
    if still_bound(sys_root, kernel_name) {
        return Err(io::Error::other(
            "still in use: marked to detach when its last user closes it",
        ));
    }
    Ok(())
}

/// Whether the loop device `kernel_name` still has a backing file.
fn still_bound(sys_root: &Path, kernel_name: &str) -> bool {
    let backing = sys_root
        .join("class/block")
        .join(kernel_name)
        .join("loop/backing_file");
    std::fs::read_to_string(backing).is_ok_and(|b| !b.trim().is_empty())
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

    #[test]
    fn a_loop_device_with_a_backing_file_is_still_bound() {
        let sys = std::env::temp_dir().join(format!("exitrd-loop-sys-{}", std::process::id()));
        for (name, backing) in [
            ("loop0", Some("/var/lib/disk.img\n")),
            ("loop1", Some("\n")),
            ("loop2", None),
        ] {
            let dir = sys.join("class/block").join(name).join("loop");
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(text) = backing {
                std::fs::write(dir.join("backing_file"), text).unwrap();
            }
        }
        let bound: Vec<bool> = ["loop0", "loop1", "loop2", "loop3"]
            .iter()
            .map(|n| still_bound(&sys, n))
            .collect();
        std::fs::remove_dir_all(&sys).unwrap();
        assert_eq!(bound, [true, false, false, false]);
    }
}
