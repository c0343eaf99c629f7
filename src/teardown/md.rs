//! Stopping MD (software RAID) arrays, written from `<linux/raid/md_u.h>`.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::ioctl::ioctl_num_type;

use super::devnode::{errno, flush, node_for, retry_for, with_context};

/// `MD_MAJOR` from `<linux/major.h>`: the ioctl type of MD.
const MD_MAJOR: u8 = 9;

/// `STOP_ARRAY`: `_IO(MD_MAJOR, 0x32)`. The direction bits of `_IO` differ
/// between architectures; the nix macro encodes them for the target.
const STOP_ARRAY: ioctl_num_type = nix::request_code_none!(MD_MAJOR, 0x32);

/// Stops the MD array whose block node is `node` (`STOP_ARRAY`).
///
/// The node is opened `O_RDONLY | O_CLOEXEC | O_EXCL`; the exclusive open
/// fails with `EBUSY` while the array is mounted or held by another device
/// (e.g. device-mapper on top), and the ioctl fails with `EBUSY` while any
/// other process has it open.
fn stop_array(node: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_EXCL)
        .open(node)
        .map_err(|e| {
            with_context(
                e,
                format!("md: opening {} exclusively to stop it", node.display()),
            )
        })?;
    // SAFETY: STOP_ARRAY is an `_IO` request: the kernel reads no argument
    // and writes no memory of ours. `file` keeps the descriptor open for the
    // duration of the call.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), STOP_ARRAY) };
    Errno::result(ret)
        .map_err(|e| with_context(e.into(), format!("md: stopping array {}", node.display())))?;
    Ok(())
}

/// How long an MD array may stay busy after the device above it was closed.
const SETTLE: Duration = Duration::from_secs(2);

/// Stops the MD array `kernel_name` (number `dev`) for good: flushes it, then stops it,
/// retrying while the device just closed above it still holds it for up to `SETTLE`, and
/// no more than half of `step_timeout`, so that the last error still comes back within
/// the step.
pub fn stop(
    kernel_name: &str,
    (major, minor): (u32, u32),
    step_timeout: Duration,
) -> io::Result<()> {
    let node = node_for(kernel_name, major, minor)?;
    flush(&node);
    stop_array_settling(&node, SETTLE.min(step_timeout / 2))
}

/// [`stop_array`], retried for up to `settle` while the array is busy: the device just
/// closed above it (a dm-crypt mapping, an LV) can keep it open for a moment after its
/// removal returned (seen as `EBUSY` on the exclusive open in 1 of 3 VM shutdowns).
fn stop_array_settling(node: &Path, settle: Duration) -> io::Result<()> {
    retry_for(
        settle,
        || stop_array(node),
        |e| errno(e) == Some(libc::EBUSY),
    )
}

#[cfg(test)]
mod tests {
    use super::super::devnode::abi_probe;
    use super::*;

    #[test]
    fn constants_match_kernel_headers() {
        abi_probe::check(&[
            ("MD_MAJOR", u64::from(MD_MAJOR)),
            ("STOP_ARRAY", abi_probe::ioctl_code(STOP_ARRAY)),
        ]);
    }

    #[test]
    fn missing_node_error_names_it() {
        let node = Path::new("/nonexistent/exitrd-md-test");
        let err = stop_array(node).unwrap_err();
        assert_eq!(errno(&err), Some(libc::ENOENT));
        assert!(
            err.to_string().contains("/nonexistent/exitrd-md-test"),
            "{err}"
        );
    }

    #[test]
    fn non_md_file_is_refused_by_kernel() {
        // /dev/null is a character device: the ioctl must fail (ENOTTY)
        // without side effects, and the error must name the node.
        let err = stop_array(Path::new("/dev/null")).unwrap_err();
        assert!(err.to_string().contains("/dev/null"), "{err}");
        assert!(errno(&err).is_some(), "{err}");
    }
}
