//! Putting the payload in place at boot: a dedicated tmpfs on `/run/initramfs`.
//!
//! Debian mounts `/run` noexec, so systemd's `access("/run/initramfs/shutdown", X_OK)`
//! fails and it silently skips the exitrd. A tmpfs of our own (exec, nosuid, nodev, 0700)
//! fixes that. It is filled beside the target and then moved over it in one step, so the
//! target is never half-written; files already in `/run/initramfs` (fsck logs) are kept.

use crate::topology::mountinfo;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Room above the payload itself, for files other boot code may still add.
const SLACK_BYTES: u64 = 1 << 20;

fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_size(&e.path()) + 4096,
            Ok(t) if t.is_file() => e
                .metadata()
                .map(|m| m.len().div_ceil(4096) * 4096)
                .unwrap_or(0),
            _ => 4096,
        })
        .sum()
}

/// Copies `src` into `dst` (which exists), keeping modes and symlinks. Nothing at the
/// destination is followed: the payload is copied over what the target already held
/// (files other boot code put in /run/initramfs), and a symlink there named like a
/// payload file or directory would otherwise lead the copy anywhere. Whatever is in the
/// way is replaced; a real directory is kept and filled.
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            crate::initrd::remove_existing(&to)?;
            symlink(fs::read_link(&from)?, &to)?;
        } else if kind.is_dir() {
            match fs::symlink_metadata(&to) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    fs::remove_file(&to)?;
                    fs::DirBuilder::new().mode(0o700).create(&to)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new().mode(0o700).create(&to)?
                }
                Err(e) => return Err(e),
            }
            fs::set_permissions(&to, entry.metadata()?.permissions())?;
            copy_tree(&from, &to)?;
        } else if kind.is_file() {
            crate::initrd::remove_existing(&to)?;
            let mut input = fs::File::open(&from)?;
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&to)?;
            io::copy(&mut input, &mut out)?;
            out.set_permissions(input.metadata()?.permissions())?;
        }
    }
    Ok(())
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(table) = fs::read("/proc/self/mountinfo") else {
        return false;
    };
    // mountinfo has absolute, resolved paths (`--target run/initramfs` must match too,
    // or a refresh would stack a second tmpfs on the first).
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let (mounts, _) = mountinfo::parse_lenient(&table);
    mounts.iter().any(|m| Path::new(&m.mount_point) == path)
}

fn context(what: impl std::fmt::Display) -> impl FnOnce(nix::Error) -> io::Error {
    move |e| io::Error::from_raw_os_error(e as i32).with_context(what)
}

trait WithContext {
    fn with_context(self, what: impl std::fmt::Display) -> io::Error;
}

impl WithContext for io::Error {
    fn with_context(self, what: impl std::fmt::Display) -> io::Error {
        io::Error::new(self.kind(), format!("{what}: {self}"))
    }
}

/// Symbolic links followed at most this many times in one lookup (the kernel's bound).
const MAX_SYMLINKS: u32 = 40;

/// Where `path` leads when `root` is `/`: each component is looked at with lstat, and
/// symbolic links are followed by hand, an absolute target starting again at `root` and
/// `..` stopping there. Nothing outside `root` is ever looked at, so a link in a payload
/// (or a fixture) is judged by what it will reach after the pivot, not by what happens
/// to be at that path in the running system. Returns the real path below `root` (not a
/// symlink); `visit` sees every path looked at on the way, with its metadata, root
/// first.
pub fn resolve_within(
    root: &Path,
    path: &Path,
    visit: &mut dyn FnMut(&Path, &fs::Metadata) -> io::Result<()>,
) -> io::Result<PathBuf> {
    use std::path::Component;
    // Components still to walk, last first; ".." cannot be a file name, so it marks a
    // parent step.
    fn push_all(todo: &mut Vec<std::ffi::OsString>, p: &Path) {
        let parts: Vec<_> = p
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        todo.extend(parts.into_iter().rev());
    }
    visit(root, &fs::symlink_metadata(root)?)?;
    let mut todo = Vec::new();
    push_all(&mut todo, path);
    let mut at: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            at.pop();
            continue;
        }
        at.push(part);
        let here: PathBuf = at.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let meta = fs::symlink_metadata(&here)?;
        visit(&here, &meta)?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: too many levels of symbolic links", here.display()),
                ));
            }
            let target = fs::read_link(&here)?;
            at.pop();
            if target.is_absolute() {
                at.clear();
            }
            push_all(&mut todo, &target);
        }
    }
    Ok(at.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// Checks that `payload/shutdown` is, or leads inside the payload to, an executable
/// regular file. Links are followed only inside the payload: a link to
/// `/usr/sbin/exitrd` would pass a plain `stat` here and fail at shutdown, when the
/// payload is `/`.
fn check_shutdown(payload: &Path) -> io::Result<PathBuf> {
    let shutdown = payload.join("shutdown");
    let real = resolve_within(payload, Path::new("shutdown"), &mut |_, _| Ok(())).map_err(|e| {
        e.with_context(format!(
            "{} (symbolic links are followed inside the payload only)",
            shutdown.display()
        ))
    })?;
    let meta = fs::symlink_metadata(&real)?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", shutdown.display()),
        ));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not executable", shutdown.display()),
        ));
    }
    Ok(real)
}

/// Where the payload's binary is found again under its build ID:
/// `/run/initramfs/.build-id/<ID>/exitrd`, a hard link (no copy) to it. The package's
/// units name the installed binary's ID (written in when the package is built):
/// exitrd.service runs only when this link is missing (nothing to repair otherwise), and
/// exitrd-report.service's `ExecSearchPath=` starts the check from this copy in RAM when
/// it is that very build, from `/usr/sbin` otherwise: reading 2 MiB of a cold binary
/// through the root's storage stack was most of a unit's time under emulation.
pub const BUILD_ID_DIR: &str = ".build-id";

/// Links `binary` (inside the new tmpfs `dir`) as `dir/.build-id/<ID>/exitrd`. A binary
/// without a build ID gets no link: the unit then runs /usr/sbin/exitrd, as before.
fn link_by_build_id(dir: &Path, binary: &Path) -> io::Result<()> {
    let Some(id) = crate::buildid::of_file(binary)? else {
        return Ok(());
    };
    let at = dir.join(BUILD_ID_DIR).join(id);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&at)?;
    fs::hard_link(binary, at.join("exitrd"))
}

/// Builds the exitrd in `target` from the files in `payload` (which must hold an
/// executable `shutdown`). Returns a one-line summary.
pub fn prepare(payload: &Path, target: &Path) -> io::Result<String> {
    prepare_using(payload, target, true)
}

/// `prepare`, with the new mount API (`new_api`, falling back to the holder mount where
/// the kernel lacks it) or with the holder mount only (tests of that fallback).
pub fn prepare_using(payload: &Path, target: &Path, new_api: bool) -> io::Result<String> {
    let binary = check_shutdown(payload)?;
    let binary = binary
        .strip_prefix(payload)
        .unwrap_or(&binary)
        .to_path_buf();
    fs::create_dir_all(target)?;
    let size = tree_size(payload) + tree_size(target) + SLACK_BYTES;
    // The new tmpfs is built detached from every mount tree and attached once full:
    // nothing else to mount, make private, unmount or remove (each costs at boot under
    // emulation). Kernels without the new mount API get the holder mount instead.
    let detached = if new_api {
        detached::tmpfs(size).ok()
    } else {
        None
    };
    let (size, replacing) = match detached {
        Some(fd) => fill_and_attach(payload, &binary, target, fd, size)?,
        None => fill_and_switch_in_holder(payload, &binary, target, size)?,
    };
    Ok(format!(
        "{} is a dedicated exec tmpfs ({} KiB) with {}: the next shutdown will pivot into it",
        target.display(),
        size.div_ceil(1024),
        if replacing {
            "a refreshed payload"
        } else {
            "the payload"
        }
    ))
}

/// The new mount API (Linux 5.2): a tmpfs created detached, filled through its mount
/// descriptor (`/proc/self/fd/N`), then attached in one step. Attaching a new mount
/// works under a shared parent (systemd makes every mount shared), where `MS_MOVE` of
/// an attached one does not.
mod detached {
    use nix::libc;
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    // <linux/mount.h>; checked against the installed headers by the tests.
    pub const FSOPEN_CLOEXEC: u32 = 0x1;
    pub const FSCONFIG_SET_STRING: u32 = 1;
    pub const FSCONFIG_CMD_CREATE: u32 = 6;
    pub const FSMOUNT_CLOEXEC: u32 = 0x1;
    pub const MOUNT_ATTR_NOSUID: u32 = 0x2;
    pub const MOUNT_ATTR_NODEV: u32 = 0x4;
    pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;

    fn fd_or_error(ret: libc::c_long) -> io::Result<OwnedFd> {
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
    }

    fn set(fs: &OwnedFd, key: &str, value: &str) -> io::Result<()> {
        let (key, value) = (CString::new(key)?, CString::new(value)?);
        // SAFETY: fsconfig(2) reads the two NUL-terminated strings, which outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A new tmpfs (exec, nosuid, nodev, mode 0700, `size` bytes), attached nowhere.
    pub fn tmpfs(size: u64) -> io::Result<OwnedFd> {
        let name = c"tmpfs";
        // SAFETY: fsopen(2) reads the NUL-terminated name.
        let fs =
            fd_or_error(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) })?;
        set(&fs, "source", "exitrd")?;
        set(&fs, "mode", "0700")?;
        set(&fs, "size", &format!("{}k", size.div_ceil(1024)))?;
        // SAFETY: no pointers are passed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_void>(),
                0,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: no pointers are passed.
        fd_or_error(unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                fs.as_raw_fd(),
                FSMOUNT_CLOEXEC,
                MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            )
        })
    }

    /// The detached mount's root as a path (its descriptor's magic link).
    pub fn root_path(mount: &OwnedFd) -> std::path::PathBuf {
        format!("/proc/self/fd/{}", mount.as_raw_fd()).into()
    }

    /// Attaches the detached mount at `target`.
    pub fn attach(mount: &OwnedFd, target: &Path) -> io::Result<()> {
        let target = CString::new(target.as_os_str().as_bytes())?;
        let empty = c"";
        // SAFETY: move_mount(2) reads the two NUL-terminated paths, which outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mount.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// dracut's request to its `dracut-shutdown.service`: with this file in /run/initramfs,
/// the unit unpacks dracut's whole image there at shutdown, over the payload (and, out of
/// room in this small tmpfs, then deletes `shutdown`). exitrd takes that place, so the
/// request is not carried over. (The package's drop-in for that unit makes it stand
/// aside too; this covers a unit that started before the payload came.)
pub const DRACUT_RESTORE_FLAG: &str = ".need_shutdown";

fn drop_dracut_restore_flag(dir: &Path) -> io::Result<()> {
    match fs::remove_file(dir.join(DRACUT_RESTORE_FLAG)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.with_context(format!(
            "remove dracut's {DRACUT_RESTORE_FLAG} from {}",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// Fills the new tmpfs (its root at `staging`): what the target already held, then the
/// payload; the binary (`binary`, relative to `payload`) linked under its build ID.
fn fill(payload: &Path, binary: &Path, target: &Path, staging: &Path) -> io::Result<()> {
    // An earlier payload's build-ID link is dropped with it (copied, it would be a
    // second full copy of the old binary).
    copy_tree(target, staging)
        .and_then(|()| match fs::remove_dir_all(staging.join(BUILD_ID_DIR)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .and_then(|()| copy_tree(payload, staging))
        .and_then(|()| link_by_build_id(staging, &staging.join(binary)))
        .map_err(|e| e.with_context(format!("copy into the new tmpfs for {}", target.display())))?;
    drop_dracut_restore_flag(staging)
}

/// An earlier exitrd tmpfs is dropped right before the new one takes its place (it
/// cannot be moved aside from its shared parent); the gap is one syscall. Returns
/// whether there was one.
fn drop_earlier(target: &Path) -> io::Result<bool> {
    let replacing = is_mount_point(target);
    if replacing {
        umount2(target, MntFlags::MNT_DETACH)
            .map_err(context(format!("detach the old {}", target.display())))?;
    }
    Ok(replacing)
}

/// Fills the detached tmpfs `mount` and attaches it at `target`. Returns its size and
/// whether it replaced an earlier one.
fn fill_and_attach(
    payload: &Path,
    binary: &Path,
    target: &Path,
    mount: std::os::fd::OwnedFd,
    size: u64,
) -> io::Result<(u64, bool)> {
    fill(payload, binary, target, &detached::root_path(&mount))?;
    let replacing = drop_earlier(target)?;
    detached::attach(&mount, target)
        .map_err(|e| e.with_context(format!("attach the new tmpfs at {}", target.display())))?;
    Ok((size, replacing))
}

/// Without the new mount API: `MS_MOVE` refuses to move a mount out of a shared parent,
/// and systemd makes every mount shared, so the new tmpfs is built inside a small
/// private holder mount beside the target, from where it can be moved.
fn fill_and_switch_in_holder(
    payload: &Path,
    binary: &Path,
    target: &Path,
    size: u64,
) -> io::Result<(u64, bool)> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "initramfs".into());
    let holder: PathBuf = parent.join(format!(".{name}.exitrd-stage"));
    let _ = fs::create_dir(&holder);
    mount(
        Some("exitrd-stage"),
        &holder,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700,size=64k"),
    )
    .map_err(context(format!("mount tmpfs on {}", holder.display())))?;
    let result = (|| {
        mount(
            None::<&str>,
            &holder,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(context(format!("make {} private", holder.display())))?;
        let staging = holder.join("new");
        fs::create_dir(&staging)?;
        let options = format!("mode=0700,size={}k", size.div_ceil(1024));
        mount(
            Some("exitrd"),
            &staging,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(context(format!("mount tmpfs on {}", staging.display())))?;
        fill(payload, binary, target, &staging)?;
        let replacing = drop_earlier(target)?;
        mount(
            Some(&staging),
            target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(context(format!(
            "move the new tmpfs onto {}",
            target.display()
        )))?;
        Ok((size, replacing))
    })();
    // Detaching the holder also drops the new tmpfs if it never left it.
    let _ = umount2(&holder, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&holder);
    result
}

/// The script that builds the payload into an image, for initramfs-tools' hook and
/// dracut's module alike (its only argument: the image's root, `DESTDIR`).
pub const PAYLOAD_BUILDER: &str = "/usr/lib/exitrd/build-payload";

/// Builds the payload from the installed files, exactly as it goes into an initramfs
/// image: by running the package's payload builder on a scratch directory. Returns the
/// scratch directory; the payload is its `exitrd/` subdirectory.
pub fn assemble_installed(hook: &Path, scratch_parent: &Path) -> io::Result<PathBuf> {
    let scratch = scratch_parent.join(format!(".exitrd-build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    let out = std::process::Command::new("sh")
        .arg(hook)
        .arg(&scratch)
        .env("DESTDIR", &scratch)
        .env("verbose", "n")
        .output()
        .map_err(|e| e.with_context(format!("run {}", hook.display())))?;
    if !out.stderr.is_empty() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    if !out.status.success() || !scratch.join("exitrd/shutdown").exists() {
        let _ = fs::remove_dir_all(&scratch);
        return Err(io::Error::other(format!(
            "{} did not produce a payload ({})",
            hook.display(),
            out.status
        )));
    }
    Ok(scratch)
}

/// `exitrd prepare` without `--payload`: build from the installed files, then prepare.
pub fn prepare_installed(hook: &Path, target: &Path) -> io::Result<String> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    let scratch = assemble_installed(hook, parent)?;
    let result = prepare(&scratch.join("exitrd"), target);
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// `exitrd prepare --from IMAGE`, the last fallback: takes the payload out of an
/// initramfs-tools image (only its `exitrd/` directory, into a private scratch directory
/// beside the target, removed afterwards), then prepares the target from it.
pub fn prepare_from_image(image: &Path, target: &Path) -> io::Result<String> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent)?;
    let scratch = parent.join(format!(".exitrd-from-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&scratch)
        .map_err(|e| e.with_context(format!("create {}", scratch.display())))?;
    let result = extract_image(image, &scratch).and_then(|payload| prepare(&payload, target));
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// Extracts the payload of `image` below `scratch`; returns the payload directory.
fn extract_image(image: &Path, scratch: &Path) -> io::Result<PathBuf> {
    let started = std::time::Instant::now();
    let found = crate::initrd::extract(image, scratch)
        .map_err(|e| e.with_context(format!("cannot read {}", image.display())))?;
    let payload = scratch.join(crate::initrd::PAYLOAD_DIR);
    let rebuild = match image.file_name().and_then(|n| n.to_str()) {
        Some(n) if n.starts_with("initrd.img-") => {
            format!("update-initramfs -u -k {}", &n["initrd.img-".len()..])
        }
        _ => "update-initramfs -u".to_string(),
    };
    if !found.found() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} holds no exitrd payload: it was built before exitrd was installed; run \
                 {rebuild}, or 'exitrd prepare' to use the installed files",
                image.display()
            ),
        ));
    }
    if let Err(e) = check_shutdown(&payload) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the exitrd payload in {} has no runnable 'shutdown' ({e}; the binary was \
                 missing when it was built); reinstall exitrd, then run {rebuild}",
                image.display()
            ),
        ));
    }
    eprintln!(
        "exitrd: extracted the payload from {}: {found}, in {} ms",
        image.display(),
        started.elapsed().as_millis()
    );
    Ok(payload)
}

#[cfg(test)]
mod mount_api_tests {
    use super::detached::*;
    use crate::teardown::devnode::abi_probe;
    use nix::libc;

    #[test]
    fn constants_match_kernel_headers() {
        abi_probe::check(&[
            ("FSOPEN_CLOEXEC", u64::from(FSOPEN_CLOEXEC)),
            ("FSCONFIG_SET_STRING", u64::from(FSCONFIG_SET_STRING)),
            ("FSCONFIG_CMD_CREATE", u64::from(FSCONFIG_CMD_CREATE)),
            ("FSMOUNT_CLOEXEC", u64::from(FSMOUNT_CLOEXEC)),
            ("MOUNT_ATTR_NOSUID", u64::from(MOUNT_ATTR_NOSUID)),
            ("MOUNT_ATTR_NODEV", u64::from(MOUNT_ATTR_NODEV)),
            (
                "MOVE_MOUNT_F_EMPTY_PATH",
                u64::from(MOVE_MOUNT_F_EMPTY_PATH),
            ),
            ("SYS_fsopen", libc::SYS_fsopen as u64),
            ("SYS_fsconfig", libc::SYS_fsconfig as u64),
            ("SYS_fsmount", libc::SYS_fsmount as u64),
            ("SYS_move_mount", libc::SYS_move_mount as u64),
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tree_keeps_modes_and_symlinks_and_size_counts_blocks() {
        let base = std::env::temp_dir().join(format!("exitrd-copy-{}", std::process::id()));
        let (src, dst) = (base.join("src"), base.join("dst"));
        fs::create_dir_all(src.join("hooks")).unwrap();
        fs::create_dir_all(&dst).unwrap();
        fs::write(src.join("exitrd"), b"#!binary").unwrap();
        fs::set_permissions(src.join("exitrd"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("exitrd", src.join("shutdown")).unwrap();
        fs::write(src.join("hooks/a"), b"x").unwrap();
        copy_tree(&src, &dst).unwrap();
        assert_eq!(
            fs::read_link(dst.join("shutdown")).unwrap(),
            Path::new("exitrd")
        );
        assert_eq!(
            fs::metadata(dst.join("exitrd"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        assert_eq!(fs::read(dst.join("hooks/a")).unwrap(), b"x");
        // two one-block files, one directory, one symlink
        assert_eq!(tree_size(&src), 4 * 4096);
        fs::remove_dir_all(&base).unwrap();
    }

    fn base(name: &str) -> PathBuf {
        let b = std::env::temp_dir().join(format!("exitrd-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&b);
        fs::create_dir_all(&b).unwrap();
        b
    }

    fn exe(p: &Path) {
        fs::write(p, b"#!binary").unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn resolve_within_follows_links_inside_the_root_only() {
        let root = base("resolve");
        exe(&root.join("exitrd"));
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/f"), b"").unwrap();
        symlink("exitrd", root.join("rel")).unwrap();
        symlink("/exitrd", root.join("abs")).unwrap();
        symlink("../../../../exitrd", root.join("up")).unwrap();
        symlink("sub", root.join("d")).unwrap();
        symlink("l2", root.join("l1")).unwrap();
        symlink("l1", root.join("l2")).unwrap();
        // A path that exists in the running system, not below the root.
        let live = std::env::current_exe().unwrap();
        symlink(&live, root.join("live")).unwrap();
        let none = &mut |_: &Path, _: &fs::Metadata| Ok(());
        for name in ["rel", "abs", "up", "exitrd"] {
            let got = resolve_within(&root, Path::new(name), none).unwrap();
            assert_eq!(got, root.join("exitrd"), "{name}");
        }
        assert_eq!(
            resolve_within(&root, Path::new("d/f"), none).unwrap(),
            root.join("sub/f")
        );
        let err = resolve_within(&root, Path::new("live"), none).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        let err = resolve_within(&root, Path::new("l1"), none).unwrap_err();
        assert!(err.to_string().contains("too many levels"), "{err}");
        let mut seen = Vec::new();
        resolve_within(&root, Path::new("d/f"), &mut |p, _| {
            seen.push(p.to_path_buf());
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                root.clone(),
                root.join("d"),
                root.join("sub"),
                root.join("sub/f")
            ]
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn shutdown_is_checked_inside_the_payload_not_in_the_running_system() {
        let root = base("shutdown-link");
        // Executable in the running system, absent from the payload: useless after the
        // pivot.
        symlink(std::env::current_exe().unwrap(), root.join("shutdown")).unwrap();
        let err = check_shutdown(&root).unwrap_err();
        assert!(err.to_string().contains("inside the payload only"), "{err}");
        fs::remove_file(root.join("shutdown")).unwrap();
        exe(&root.join("exitrd"));
        symlink("/exitrd", root.join("shutdown")).unwrap();
        check_shutdown(&root).unwrap();

        // The same from an image: refused when extracted, before anything is mounted.
        let mut c = crate::initrd::tests::Cpio::default();
        c.symlink(
            "exitrd/shutdown",
            std::env::current_exe().unwrap().to_str().unwrap(),
        );
        let image = root.join("initrd.img-6.1.0-test");
        fs::write(&image, c.trailer()).unwrap();
        let scratch = root.join("scratch");
        fs::create_dir(&scratch).unwrap();
        let err = extract_image(&image, &scratch).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no runnable 'shutdown'"), "{msg}");
        assert!(msg.contains("update-initramfs -u -k 6.1.0-test"), "{msg}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn copy_tree_never_follows_a_symlink_at_the_destination() {
        let root = base("copy-nofollow");
        let (src, dst, outside) = (root.join("src"), root.join("dst"), root.join("outside"));
        for d in [&src, &dst, &outside] {
            fs::create_dir(d).unwrap();
        }
        fs::write(outside.join("victim"), b"precious").unwrap();
        // What the target held: links named like payload entries, and a directory where
        // the payload has a file.
        symlink(outside.join("victim"), dst.join("exitrd")).unwrap();
        symlink(&outside, dst.join("hooks")).unwrap();
        symlink(outside.join("new"), dst.join("exitrd.conf")).unwrap();
        fs::create_dir(dst.join("shutdown")).unwrap();
        exe(&src.join("exitrd"));
        fs::write(src.join("exitrd.conf"), b"TIMEOUT=30\n").unwrap();
        fs::create_dir(src.join("hooks")).unwrap();
        fs::write(src.join("hooks/victim"), b"hook").unwrap();
        symlink("exitrd", src.join("shutdown")).unwrap();
        copy_tree(&src, &dst).unwrap();
        assert_eq!(fs::read(outside.join("victim")).unwrap(), b"precious");
        assert!(!outside.join("new").exists());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
        assert!(fs::symlink_metadata(dst.join("exitrd")).unwrap().is_file());
        assert_eq!(fs::read(dst.join("exitrd")).unwrap(), b"#!binary");
        assert_eq!(
            fs::symlink_metadata(dst.join("exitrd"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        assert!(fs::symlink_metadata(dst.join("hooks")).unwrap().is_dir());
        assert_eq!(fs::read(dst.join("hooks/victim")).unwrap(), b"hook");
        assert_eq!(fs::read(dst.join("exitrd.conf")).unwrap(), b"TIMEOUT=30\n");
        assert_eq!(
            fs::read_link(dst.join("shutdown")).unwrap(),
            Path::new("exitrd")
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_a_payload_without_an_executable_shutdown() {
        let base = std::env::temp_dir().join(format!("exitrd-nopayload-{}", std::process::id()));
        fs::create_dir_all(&base).unwrap();
        let err = prepare(&base, &base.join("target")).unwrap_err();
        assert!(err.to_string().contains("shutdown"), "{err}");
        fs::write(base.join("shutdown"), b"x").unwrap();
        let err = prepare(&base, &base.join("target")).unwrap_err();
        assert!(err.to_string().contains("not executable"), "{err}");
        fs::remove_dir_all(&base).unwrap();
    }
}
