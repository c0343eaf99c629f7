//! Block device nodes and error context shared by the teardown modules.
//!
//! In the exitrd `/dev` may lack nodes for the devices that still have to be
//! closed (`/dev/md0`, `/dev/dm-3`, ...). [`node_for`] returns a usable node
//! for a `major:minor` pair, creating a private one under
//! [`NODE_DIR`] when `/dev` has none.
//!
//! [`with_context`] and [`errno`] let the kernel-interface modules report
//! errors that name the device while keeping the original `errno` reachable
//! (callers want to tell `EBUSY` from `ENXIO`).

use std::error::Error;
use std::fmt;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::stat::{self, Mode, SFlag};

/// Directory where [`node_for`] creates block nodes that `/dev` lacks. In `/dev` itself:
/// it is the old system's devtmpfs, the one file system here that allows device nodes
/// (`/run`, and the exitrd's own tmpfs, are mounted `nodev`: a node made there cannot
/// be opened).
pub const NODE_DIR: &str = "/dev/.exitrd-nodes";

/// Returns a block device node for `major:minor`.
///
/// `name` is the kernel name of the device (as in `/sys/class/block`, e.g.
/// `md0`, `dm-3`, `loop0`; a `DEVNAME` such as `cciss/c0d0` is accepted too).
/// If `/dev/<name>` exists and is a block device with exactly that device
/// number it is returned. Otherwise a node is created (mode 0600) as
/// `/dev/.exitrd-nodes/<name>` (a `/` in `name` becomes `!`, as in sysfs) and
/// that path is returned; a stale node of the same name there is replaced.
pub fn node_for(name: &str, major: u32, minor: u32) -> io::Result<PathBuf> {
    node_for_in(Path::new("/dev"), Path::new(NODE_DIR), name, major, minor)
}

/// [`node_for`] with the `/dev` directory and the node directory as
/// parameters (so tests can use temporary directories).
fn node_for_in(
    dev_dir: &Path,
    node_dir: &Path,
    name: &str,
    major: u32,
    minor: u32,
) -> io::Result<PathBuf> {
    check_name(name)?;

    let in_dev = dev_dir.join(name);
    // Follows symlinks on purpose: a symlink to the right node is fine.
    if let Ok(meta) = fs::metadata(&in_dev) {
        if is_block_node(&meta, major, minor) {
            return Ok(in_dev);
        }
    }

    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(node_dir)
        .map_err(|e| {
            with_context(
                e,
                format!(
                    "creating {} for a node of {name} ({major}:{minor})",
                    node_dir.display()
                ),
            )
        })?;

    let node = node_dir.join(name.replace('/', "!"));
    match fs::symlink_metadata(&node) {
        Ok(meta) if is_block_node(&meta, major, minor) => return Ok(node),
        Ok(_) => fs::remove_file(&node)
            .map_err(|e| with_context(e, format!("removing stale node {}", node.display())))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(with_context(e, format!("inspecting {}", node.display())));
        }
    }

    let dev = stat::makedev(u64::from(major), u64::from(minor));
    match stat::mknod(&node, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), dev) {
        Ok(()) => Ok(node),
        // Someone else created it in the meantime: accept it if it is right.
        Err(Errno::EEXIST)
            if fs::symlink_metadata(&node).is_ok_and(|m| is_block_node(&m, major, minor)) =>
        {
            Ok(node)
        }
        Err(e) => Err(with_context(
            e.into(),
            format!(
                "creating block node {} for {name} ({major}:{minor})",
                node.display()
            ),
        )),
    }
}

/// Rejects names that cannot be a device name below `/dev`.
fn check_name(name: &str) -> io::Result<()> {
    let bad_component = name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..");
    if bad_component || name.as_bytes().contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid block device name {:?}", name),
        ));
    }
    Ok(())
}

fn is_block_node(meta: &fs::Metadata, major: u32, minor: u32) -> bool {
    meta.file_type().is_block_device()
        && stat::major(meta.rdev()) == u64::from(major)
        && stat::minor(meta.rdev()) == u64::from(minor)
}

/// An error message naming the device, wrapping the original error.
#[derive(Debug)]
struct Context {
    what: String,
    source: io::Error,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl Error for Context {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// Wraps `err` with a description of what was being done (which should name
/// the device). The result keeps `err`'s [`io::ErrorKind`]; its errno stays
/// reachable through [`errno`].
pub fn with_context(err: io::Error, what: impl Into<String>) -> io::Error {
    io::Error::new(
        err.kind(),
        Context {
            what: what.into(),
            source: err,
        },
    )
}

/// The OS error number behind `err`, looking through [`with_context`]
/// wrappers. E.g. `errno(&e) == Some(nix::libc::EBUSY)` for a device still open.
pub fn errno(err: &io::Error) -> Option<i32> {
    if let Some(code) = err.raw_os_error() {
        return Some(code);
    }
    let ctx = err.get_ref()?.downcast_ref::<Context>()?;
    errno(&ctx.source)
}

/// Writes back whatever the device's own page cache still holds and asks the device to
/// flush its write cache (fsync on a block device does both), before it is closed for
/// good. Best effort: a device that vanished meanwhile needs no flush, and a failed flush
/// shows in the close that follows.
pub fn flush(node: &Path) {
    if let Ok(f) = fs::File::open(node) {
        let _ = f.sync_all();
    }
}

/// How often [`retry_for`] tries again.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// Runs `attempt` until it succeeds, fails with an error that `again` does not accept,
/// or `limit` has passed (it always runs at least once), sleeping [`RETRY_INTERVAL`]
/// between attempts; returns the last result. For the kernel's short after-effects
/// (an array still held for a moment after the device above it went, a disconnect not
/// yet visible in sysfs), never for waiting on something that may not change. It runs in
/// the runtime's worker, whose parent feeds the watchdog meanwhile.
pub fn retry_for<T>(
    limit: Duration,
    mut attempt: impl FnMut() -> io::Result<T>,
    again: impl Fn(&io::Error) -> bool,
) -> io::Result<T> {
    let until = Instant::now() + limit;
    loop {
        match attempt() {
            Err(e) if again(&e) && Instant::now() < until => std::thread::sleep(RETRY_INTERVAL),
            other => return other,
        }
    }
}

/// Converts a path to a C string for a system call, naming `what` in the
/// error when the path contains a NUL byte.
pub(crate) fn c_path(path: &Path, what: &str) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}: path {} contains a NUL byte", path.display()),
        )
    })
}

/// Test support: the kernel's view of the ABI, read from the real headers.
///
/// `tests/kernel_abi.c` includes `<linux/dm-ioctl.h>`, `<linux/raid/md_u.h>`
/// and `<linux/loop.h>` and prints `key value` lines; it is compiled with `cc`
/// from `PATH` and run once per test binary. A missing compiler or header is
/// a test failure, not a skip.
#[cfg(test)]
pub(crate) mod abi_probe {
    use std::collections::BTreeMap;
    use std::process::Command;
    use std::sync::OnceLock;

    const SOURCE: &str = include_str!("../../tests/kernel_abi.c");

    fn compile_and_run() -> Result<BTreeMap<String, u64>, String> {
        let dir = std::env::temp_dir().join(format!(
            "exitrd-kernel-abi-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let src = dir.join("kernel_abi.c");
        let exe = dir.join("kernel_abi");
        let result = (|| {
            std::fs::write(&src, SOURCE)
                .map_err(|e| format!("cannot write {}: {e}", src.display()))?;
            let out = Command::new("cc")
                .args(["-std=gnu11", "-Wall", "-Werror", "-o"])
                .arg(&exe)
                .arg(&src)
                .output()
                .map_err(|e| {
                    format!(
                        "cannot run `cc` ({e}); the kernel ABI tests need a C \
                         compiler in PATH (apt install gcc)"
                    )
                })?;
            if !out.status.success() {
                return Err(format!(
                    "compiling the kernel ABI probe failed ({}); are the kernel \
                     headers installed (apt install linux-libc-dev)?\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let out = Command::new(&exe)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
            if !out.status.success() {
                return Err(format!("kernel ABI probe failed: {}", out.status));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let mut map = BTreeMap::new();
            for line in text.lines() {
                let (key, value) = line
                    .split_once(' ')
                    .ok_or_else(|| format!("bad probe output line {line:?}"))?;
                let value = value
                    .trim()
                    .parse::<u64>()
                    .map_err(|e| format!("bad value in probe line {line:?}: {e}"))?;
                map.insert(key.to_string(), value);
            }
            Ok(map)
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    /// The values printed by the probe (panics with the reason on failure).
    pub(crate) fn kernel_values() -> &'static BTreeMap<String, u64> {
        static VALUES: OnceLock<Result<BTreeMap<String, u64>, String>> = OnceLock::new();
        match VALUES.get_or_init(compile_and_run) {
            Ok(map) => map,
            Err(msg) => panic!("kernel ABI probe unavailable: {msg}"),
        }
    }

    /// Compares each `(probe key, value used by the Rust code)` pair with the
    /// kernel headers, printing every comparison, and fails listing all
    /// mismatches.
    pub(crate) fn check(pairs: &[(&str, u64)]) {
        let kernel = kernel_values();
        let mut bad = Vec::new();
        for &(key, rust) in pairs {
            match kernel.get(key) {
                Some(&k) if k == rust => println!("ok   {key:<40} kernel={k:#x} rust={rust:#x}"),
                Some(&k) => {
                    println!("FAIL {key:<40} kernel={k:#x} rust={rust:#x}");
                    bad.push(format!("{key}: kernel {k:#x}, rust {rust:#x}"));
                }
                None => {
                    println!("FAIL {key:<40} not printed by tests/kernel_abi.c");
                    bad.push(format!("{key}: missing from probe output"));
                }
            }
        }
        assert!(bad.is_empty(), "kernel ABI mismatch:\n{}", bad.join("\n"));
    }

    /// An ioctl request code as the probe prints it. Codes are 32-bit on
    /// Linux; `ioctl_num_type` is `c_ulong` on glibc but `c_int` on musl,
    /// where a direct cast to u64 would sign-extend.
    pub(crate) fn ioctl_code(code: nix::sys::ioctl::ioctl_num_type) -> u64 {
        u64::from(code as u32)
    }

    /// Byte offset of `field` inside `base` (a safe `offset_of!` that works
    /// with the crate's MSRV).
    pub(crate) fn offset<T, F>(base: &T, field: &F) -> u64 {
        (field as *const F as usize - base as *const T as usize) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("exitrd-devnode-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    /// Fails the test, saying what is missing, when this process cannot make device
    /// nodes (the tests that need it are `#[ignore]`d and run with `--include-ignored`).
    fn require_mknod(dir: &Path) {
        let probe = dir.join("mknod-probe");
        let made = stat::mknod(
            &probe,
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o600),
            stat::makedev(7, 200),
        );
        let _ = fs::remove_file(&probe);
        if let Err(e) = made {
            let _ = fs::remove_dir_all(dir);
            panic!(
                "this test needs CAP_MKNOD (run as root): mknod in {} failed: {e}",
                dir.display()
            );
        }
    }

    #[test]
    fn retry_for_retries_only_what_it_is_told_to() {
        let busy = || io::Error::from_raw_os_error(nix::libc::EBUSY);
        let is_busy = |e: &io::Error| errno(e) == Some(nix::libc::EBUSY);

        // Busy twice, then free: three attempts, success.
        let mut n = 0;
        let r = retry_for(
            Duration::from_secs(5),
            || {
                n += 1;
                if n < 3 {
                    Err(busy())
                } else {
                    Ok(n)
                }
            },
            is_busy,
        );
        assert_eq!(r.unwrap(), 3);

        // Another error: returned at once.
        let mut n = 0;
        let r: io::Result<()> = retry_for(
            Duration::from_secs(5),
            || {
                n += 1;
                Err(io::Error::from_raw_os_error(nix::libc::ENXIO))
            },
            is_busy,
        );
        assert_eq!(errno(&r.unwrap_err()), Some(nix::libc::ENXIO));
        assert_eq!(n, 1);

        // Busy for ever: gives up after the limit with the last error, having tried
        // more than once; a zero limit means exactly one attempt.
        let started = Instant::now();
        let mut n = 0;
        let r: io::Result<()> = retry_for(
            Duration::from_millis(200),
            || {
                n += 1;
                Err(busy())
            },
            is_busy,
        );
        assert_eq!(errno(&r.unwrap_err()), Some(nix::libc::EBUSY));
        assert!(n >= 2, "{n} attempts");
        assert!(started.elapsed() < Duration::from_secs(5));
        let mut n = 0;
        let _ = retry_for(
            Duration::ZERO,
            || -> io::Result<()> {
                n += 1;
                Err(busy())
            },
            is_busy,
        );
        assert_eq!(n, 1);
    }

    #[test]
    fn fallback_nodes_go_where_nodes_can_be_opened() {
        // /run is nodev on Debian (and after the pivot); /dev is the devtmpfs.
        assert!(NODE_DIR.starts_with("/dev/"), "{NODE_DIR}");
    }

    #[test]
    fn rejects_bad_names() {
        for name in ["", ".", "..", "a/../b", "/abs", "x\0y", "trailing/"] {
            let err = node_for_in(
                Path::new("/nonexistent"),
                Path::new("/nonexistent"),
                name,
                9,
                0,
            )
            .expect_err(name);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    #[ignore = "needs CAP_MKNOD (root): creates block device nodes"]
    fn uses_existing_node_or_creates_one() {
        let base = tempdir("nodes");
        require_mknod(&base);
        let dev = base.join("dev");
        let nodes = base.join("run/exitrd-nodes");
        fs::create_dir_all(&dev).unwrap();
        let mode = Mode::from_bits_truncate(0o600);
        stat::mknod(&dev.join("md0"), SFlag::S_IFBLK, mode, stat::makedev(9, 0)).unwrap();
        // Right name, wrong device number.
        stat::mknod(&dev.join("md1"), SFlag::S_IFBLK, mode, stat::makedev(9, 7)).unwrap();
        // Right name, but a regular file.
        fs::write(dev.join("md2"), b"").unwrap();

        assert_eq!(
            node_for_in(&dev, &nodes, "md0", 9, 0).unwrap(),
            dev.join("md0")
        );

        let made = node_for_in(&dev, &nodes, "md1", 9, 1).unwrap();
        assert_eq!(made, nodes.join("md1"));
        let meta = fs::symlink_metadata(&made).unwrap();
        assert!(is_block_node(&meta, 9, 1));
        assert_eq!(meta.mode() & 0o777 & !0o600, 0);

        // Second call reuses the node; a stale node is replaced.
        assert_eq!(node_for_in(&dev, &nodes, "md1", 9, 1).unwrap(), made);
        let again = node_for_in(&dev, &nodes, "md1", 9, 5).unwrap();
        assert!(is_block_node(&fs::symlink_metadata(&again).unwrap(), 9, 5));

        let md2 = node_for_in(&dev, &nodes, "md2", 9, 2).unwrap();
        assert_eq!(md2, nodes.join("md2"));

        // DEVNAME-style names with a slash are flattened like sysfs does.
        let cciss = node_for_in(&dev, &nodes, "cciss/c0d0", 104, 0).unwrap();
        assert_eq!(cciss, nodes.join("cciss!c0d0"));

        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn context_keeps_errno() {
        let err = with_context(
            io::Error::from_raw_os_error(nix::libc::EBUSY),
            "removing 'x'",
        );
        assert_eq!(errno(&err), Some(nix::libc::EBUSY));
        let twice = with_context(err, "outer");
        assert_eq!(errno(&twice), Some(nix::libc::EBUSY));
        let text = twice.to_string();
        assert!(text.starts_with("outer: removing 'x': "), "{text}");
        assert_eq!(errno(&io::Error::other("plain")), None);
    }

    #[test]
    fn c_path_rejects_nul() {
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/dev/a\0b"));
        let err = c_path(p, "swapoff").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(c_path(Path::new("/dev/sda2"), "swapoff").is_ok());
    }
}
