//! Disabling swap areas (`swapoff(2)`).

use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::libc;

use super::devnode::{c_path, with_context};

/// Stops swapping to `path` (a block device node or a swap file), as listed
/// in `/proc/swaps`.
///
/// Fails with `EINVAL` when `path` is not an active swap area, and with
/// `ENOMEM` when its pages do not fit into memory.
pub fn swapoff(path: &Path) -> io::Result<()> {
    let c = c_path(path, "swapoff")?;
    // SAFETY: `c` is a valid NUL-terminated string that lives until after
    // the call; swapoff(2) only reads it.
    let ret = unsafe { libc::swapoff(c.as_ptr()) };
    Errno::result(ret)
        .map_err(|e| with_context(e.into(), format!("swapoff {}", path.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::devnode::errno;
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn nul_in_path_is_refused() {
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/swap\0file"));
        assert_eq!(swapoff(p).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn non_swap_file_fails_and_names_path() {
        // A fresh regular file can never be an active swap area, so this
        // cannot turn off real swap: expect EINVAL (or EPERM unprivileged).
        let path = std::env::temp_dir().join(format!("exitrd-swap-{}", std::process::id()));
        std::fs::write(&path, b"not swap").unwrap();
        let err = swapoff(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        let code = errno(&err);
        assert!(
            code == Some(libc::EINVAL) || code == Some(libc::EPERM),
            "{err}"
        );
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
}
