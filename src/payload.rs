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
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
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

/// Copies `src` into `dst` (which exists), keeping modes and symlinks.
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            let _ = fs::remove_file(&to);
            symlink(fs::read_link(&from)?, &to)?;
        } else if kind.is_dir() {
            fs::create_dir_all(&to)?;
            fs::set_permissions(&to, entry.metadata()?.permissions())?;
            copy_tree(&from, &to)?;
        } else if kind.is_file() {
            fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(table) = fs::read("/proc/self/mountinfo") else {
        return false;
    };
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

/// Builds the exitrd in `target` from the files in `payload` (which must hold an
/// executable `shutdown`). Returns a one-line summary.
pub fn prepare(payload: &Path, target: &Path) -> io::Result<String> {
    let shutdown = payload.join("shutdown");
    let meta =
        fs::metadata(&shutdown).map_err(|e| e.with_context(format!("{}", shutdown.display())))?;
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not executable", shutdown.display()),
        ));
    }
    let parent = target.parent().unwrap_or(Path::new("/"));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "initramfs".into());
    fs::create_dir_all(target)?;
    // MS_MOVE refuses to move a mount out of a shared parent, and systemd makes every
    // mount shared: the new tmpfs is built inside a small private holder mount, from
    // where it can be moved.
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
    let result = fill_and_switch(payload, target, &holder);
    // Detaching the holder also drops the new tmpfs if it never left it.
    let _ = umount2(&holder, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&holder);
    let (size, replacing) = result?;
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

/// Mounts the new tmpfs inside `holder`, fills it, and moves it onto `target`.
/// Returns its size and whether it replaced an earlier one.
fn fill_and_switch(payload: &Path, target: &Path, holder: &Path) -> io::Result<(u64, bool)> {
    mount(
        None::<&str>,
        holder,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(context(format!("make {} private", holder.display())))?;
    let staging = holder.join("new");
    fs::create_dir(&staging)?;
    let size = tree_size(payload) + tree_size(target) + SLACK_BYTES;
    let options = format!("mode=0700,size={}k", size.div_ceil(1024));
    mount(
        Some("exitrd"),
        &staging,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(context(format!("mount tmpfs on {}", staging.display())))?;
    copy_tree(target, &staging)
        .and_then(|()| copy_tree(payload, &staging))
        .map_err(|e| e.with_context(format!("copy into {}", staging.display())))?;
    // An earlier exitrd tmpfs is dropped right before the new one takes its place (it
    // cannot be moved aside from its shared parent either); the gap is one syscall.
    let replacing = is_mount_point(target);
    if replacing {
        umount2(target, MntFlags::MNT_DETACH)
            .map_err(context(format!("detach the old {}", target.display())))?;
    }
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
}

/// The initramfs-tools hook that builds the payload into an image.
pub const INSTALLED_HOOK: &str = "/usr/share/initramfs-tools/hooks/exitrd";

/// Builds the payload from the installed files, exactly as it goes into an initramfs
/// image: by running the package's initramfs-tools hook with `DESTDIR` set to a scratch
/// directory. Returns the scratch directory; the payload is its `exitrd/` subdirectory.
pub fn assemble_installed(hook: &Path, scratch_parent: &Path) -> io::Result<PathBuf> {
    let scratch = scratch_parent.join(format!(".exitrd-build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    let out = std::process::Command::new("sh")
        .arg(hook)
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
    if !payload.join("shutdown").is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the exitrd payload in {} has no runnable 'shutdown' (the binary was missing \
                 when it was built); reinstall exitrd, then run {rebuild}",
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
