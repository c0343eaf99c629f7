//! `exitrd prepare` for real: mounts a tmpfs, so it needs root. `#[ignore]`d; `sh
//! scripts/test` runs it (as root) with `--include-ignored`.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

mod common;

/// The one file below `target/.build-id` (panics on none or more).
fn only_build_id_link(target: &Path) -> std::path::PathBuf {
    let ids: Vec<_> = fs::read_dir(target.join(".build-id"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let files: Vec<_> = fs::read_dir(&ids[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (fs::metadata(a).unwrap(), fs::metadata(b).unwrap());
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[test]
#[ignore = "needs root: mounts a tmpfs"]
fn prepare_mounts_a_dedicated_exec_tmpfs_keeps_files_and_replaces_in_one_step() {
    // The binary, as the initramfs runs it: the new mount API (a detached tmpfs).
    exercise("new-api", |payload, target| {
        let out = Command::new(env!("CARGO_BIN_EXE_exitrd"))
            .args(["prepare", "--payload"])
            .arg(payload)
            .arg("--target")
            .arg(target)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    });
}

#[test]
#[ignore = "needs root: mounts a tmpfs"]
fn prepare_without_the_new_mount_api_builds_in_a_private_holder() {
    // The fallback for kernels without fsopen(2): the same result.
    exercise(
        "holder",
        |payload, target| match exitrd::payload::prepare_using(payload, target, false) {
            Ok(summary) => (true, summary),
            Err(e) => (false, e.to_string()),
        },
    );
}

/// Prepares `run/initramfs` twice (fresh, then refreshed) under a shared parent, as
/// systemd mounts /run, with `prepare` (ok, its message).
fn exercise(name: &str, prepare: impl Fn(&Path, &Path) -> (bool, String)) {
    common::require_root("this test mounts a tmpfs");
    let base = std::env::temp_dir().join(format!("exitrd-prepare-{name}-{}", std::process::id()));
    let payload = base.join("payload");
    let run = base.join("run");
    let target = run.join("initramfs");
    fs::create_dir_all(&payload).unwrap();
    common::shared_tmpfs(&run);
    fs::create_dir_all(&target).unwrap();
    fs::copy(env!("CARGO_BIN_EXE_exitrd"), payload.join("exitrd")).unwrap();
    symlink("exitrd", payload.join("shutdown")).unwrap();
    fs::write(target.join("fsck.log"), "kept").unwrap();
    // dracut's request to unpack its image here at shutdown: exitrd takes that place.
    fs::write(target.join(".need_shutdown"), "").unwrap();

    let prepare = || prepare(&payload, &target);
    let (ok, said) = prepare();
    assert!(ok, "{said}");
    let m = common::mounts_at(&target);
    assert_eq!(m.len(), 1, "{m:?}");
    let line = &m[0];
    assert!(line.contains(" - tmpfs exitrd "), "{line}");
    assert!(
        line.contains("nosuid") && line.contains("nodev") && !line.contains("noexec"),
        "{line}"
    );
    assert!(line.contains("mode=700"), "{line}");
    assert_eq!(fs::read_to_string(target.join("fsck.log")).unwrap(), "kept");
    assert!(
        !target.join(".need_shutdown").exists(),
        "dracut's restore flag carried over"
    );
    assert_eq!(
        fs::read_link(target.join("shutdown")).unwrap(),
        Path::new("exitrd")
    );
    let mode = fs::metadata(target.join("shutdown"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o111, 0);
    // The copied binary runs from there: the mount is really exec.
    let v = Command::new(target.join("exitrd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("exitrd "));
    // The binary is found again under its build ID (exitrd.service's ExecSearchPath=),
    // as a hard link: the same inode, no second copy in RAM.
    let by_id = only_build_id_link(&target);
    let id = exitrd::buildid::of_file(&payload.join("exitrd"))
        .unwrap()
        .unwrap();
    assert_eq!(by_id, target.join(".build-id").join(&id).join("exitrd"));
    assert!(same_inode(&by_id, &target.join("exitrd")));

    // Again: refreshed in place, still exactly one mount, files still kept.
    let (ok, said) = prepare();
    assert!(ok, "{said}");
    assert!(said.contains("refreshed"), "{said}");
    assert_eq!(common::mounts_at(&target).len(), 1);
    assert_eq!(fs::read_to_string(target.join("fsck.log")).unwrap(), "kept");
    // Still one link, to the new copy (the old one is not carried over as a copy).
    let again = only_build_id_link(&target);
    assert!(same_inode(&again, &target.join("exitrd")));

    // Nothing of the staging is left behind.
    let leftovers: Vec<_> = fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("initramfs")]);
    assert!(common::mounts_at(&run.join(".initramfs.exitrd-stage")).is_empty());

    nix::mount::umount2(&run, nix::mount::MntFlags::MNT_DETACH).unwrap();
    fs::remove_dir_all(&base).unwrap();
}
