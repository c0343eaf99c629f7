//! `exitrd prepare --from IMAGE` on real initramfs-tools images, one per compression,
//! built by mkinitramfs with our hook (tests/initrd/make-images). The tests that need
//! images are `#[ignore]`d: `sh scripts/test` runs them with `--include-ignored` and
//! EXITRD_TEST_INITRD_DIR set to the directory that script filled; run without it, they
//! fail saying so.

use exitrd::initrd::{self, Compression};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;

/// `exitrd prepare --from IMAGE --target TARGET`.
fn prepare_from(image: &Path, target: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_exitrd"))
        .args(["prepare", "--from"])
        .arg(image)
        .arg("--target")
        .arg(target)
        .output()
        .unwrap()
}

const COMPRESSIONS: [(&str, Compression); 4] = [
    ("gzip", Compression::Gzip),
    ("zstd", Compression::Zstd),
    ("xz", Compression::Xz),
    ("lz4", Compression::Lz4Legacy),
];

/// The directory of real images; the test fails when it is not given.
fn images_dir() -> PathBuf {
    match std::env::var_os("EXITRD_TEST_INITRD_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => panic!(
            "this test needs real initramfs images: set EXITRD_TEST_INITRD_DIR to a directory \
             filled by tests/initrd/make-images (sh scripts/test does)"
        ),
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("exitrd-images-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// Every entry below `dir`: relative path, kind, permission bits, and the link target
/// or the file contents.
fn tree(dir: &Path) -> Vec<(PathBuf, &'static str, u32, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, &'static str, u32, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            let mode = m.mode() & 0o7777;
            if m.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.push((rel, "symlink", 0, t.into_os_string().into_encoded_bytes()));
            } else if m.is_dir() {
                out.push((rel, "dir", mode, Vec::new()));
                walk(base, &p, out);
            } else {
                out.push((rel, "file", mode, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Time this thread has run, in ns (the machine may be busy with other work).
fn cpu_ns() -> u64 {
    fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "needs real images: EXITRD_TEST_INITRD_DIR from tests/initrd/make-images"]
fn extracts_the_payload_from_real_images_of_every_compression() {
    let dir = images_dir();
    let mut figures = Vec::new();
    for (name, compression) in COMPRESSIONS {
        let image = dir.join(format!("initrd.img-{name}"));
        let size = fs::metadata(&image)
            .unwrap_or_else(|e| panic!("{}: {e} (run tests/initrd/make-images)", image.display()))
            .len();
        let dest = scratch(name);
        let (started, cpu0) = (Instant::now(), cpu_ns());
        let got = initrd::extract(&image, &dest).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (took, cpu) = (started.elapsed(), cpu_ns() - cpu0);

        // The early part from prepend_earlyinitramfs first, the compressed main archive last.
        assert_eq!(
            got.parts.first(),
            Some(&Compression::None),
            "{name}: {got:?}"
        );
        assert_eq!(got.parts.last(), Some(&compression), "{name}: {got:?}");
        let payload = dest.join("exitrd");
        let expected = dir.join(format!("expected-{name}/exitrd"));
        let (ours, theirs) = (tree(&payload), tree(&expected));
        let names = |t: &[(PathBuf, &str, u32, Vec<u8>)]| -> Vec<String> {
            t.iter()
                .map(|e| format!("{} {}", e.1, e.0.display()))
                .collect()
        };
        assert_eq!(
            names(&ours),
            names(&theirs),
            "{name}: entries differ from unmkinitramfs"
        );
        for (a, b) in ours.iter().zip(&theirs) {
            assert!(
                a == b,
                "{name}: {} differs from unmkinitramfs",
                a.0.display()
            );
        }
        // The hard link group of the test hook stays one inode.
        let ino = |p: &str| fs::metadata(payload.join(p)).unwrap().ino();
        assert_eq!(ino("exitrd.conf"), ino("exitrd.conf.link"), "{name}");
        // exitrd/exitrd is linked to a name outside the payload that carries its data.
        assert_eq!(
            fs::read(payload.join("exitrd")).unwrap(),
            fs::read(expected.join("exitrd")).unwrap()
        );
        assert_eq!(
            fs::read_link(payload.join("shutdown")).unwrap(),
            Path::new("exitrd")
        );
        figures.push(format!(
            "  {name:>4}: image {:>5.1} MiB in {} parts, payload {} files {} KiB: \
             {:>5} ms ({:>5} ms on the CPU)",
            size as f64 / (1 << 20) as f64,
            got.parts.len(),
            got.files,
            got.bytes.div_ceil(1024),
            took.as_millis(),
            cpu / 1_000_000
        ));
        fs::remove_dir_all(&dest).unwrap();
    }
    println!(
        "initrd images: extraction of the payload\n{}",
        figures.join("\n")
    );
}

/// The whole command, as an admin runs it: a dedicated exec tmpfs with the image's
/// payload, and no scratch directory left behind. Needs root (mounts).
#[test]
#[ignore = "needs root (mounts a tmpfs) and real images: EXITRD_TEST_INITRD_DIR"]
fn prepare_from_a_real_image_mounts_the_payload() {
    let dir = images_dir();
    common::require_root("this test mounts a tmpfs");
    let base = scratch("prepare");
    let run = base.join("run");
    let target = run.join("initramfs");
    common::shared_tmpfs(&run);
    let image = dir.join("initrd.img-zstd");
    let out = prepare_from(&image, &target);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mounted = common::mounts_at(&target);
    let shutdown = fs::metadata(target.join("shutdown"));
    let leftovers: Vec<_> = fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "initramfs")
        .collect();
    let same = fs::read(target.join("exitrd")).ok()
        == fs::read(dir.join("expected-zstd/exitrd/exitrd")).ok();
    let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
    let _ = nix::mount::umount2(&run, nix::mount::MntFlags::MNT_DETACH);
    let _ = fs::remove_dir_all(&base);

    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("exitrd: extracted the payload from"),
        "{stderr}"
    );
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    assert!(mounted[0].contains(" - tmpfs exitrd "), "{}", mounted[0]);
    assert!(!mounted[0].contains("noexec"), "{}", mounted[0]);
    assert!(shutdown.unwrap().permissions().mode() & 0o111 != 0);
    assert!(same, "the binary in the target is the one in the image");
    assert!(leftovers.is_empty(), "scratch left behind: {leftovers:?}");
}

/// An image built before exitrd was installed: the message says what to run.
#[test]
fn an_image_without_the_payload_says_how_to_fix_it() {
    let base = scratch("nopayload");
    // One newc archive holding only /init, then its trailer.
    let mut cpio = Vec::new();
    for (name, mode, body) in [
        ("init", 0o100755u32, &b"#!/bin/sh\n"[..]),
        ("TRAILER!!!", 0, &b""[..]),
    ] {
        cpio.extend_from_slice(b"070701");
        for f in [
            1,
            mode,
            0,
            0,
            1,
            0,
            body.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ] {
            cpio.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        cpio.extend_from_slice(name.as_bytes());
        cpio.push(0);
        while cpio.len() % 4 != 0 {
            cpio.push(0);
        }
        cpio.extend_from_slice(body);
        while cpio.len() % 4 != 0 {
            cpio.push(0);
        }
    }
    let image = base.join("initrd.img-6.1.0-test-amd64");
    fs::write(&image, &cpio).unwrap();
    let target = base.join("run/initramfs");
    let out = prepare_from(&image, &target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds no exitrd payload"), "{stderr}");
    assert!(
        stderr.contains("update-initramfs -u -k 6.1.0-test-amd64"),
        "{stderr}"
    );
    let left: Vec<_> = fs::read_dir(base.join("run")).unwrap().collect();
    assert_eq!(left.len(), 0, "scratch left behind");

    // Not an image at all.
    let out = Command::new(env!("CARGO_BIN_EXE_exitrd"))
        .args([
            "prepare",
            "--from",
            env!("CARGO_BIN_EXE_exitrd"),
            "--target",
        ])
        .arg(&target)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not an initramfs image"), "{stderr}");

    // --from and --payload exclude each other.
    let out = Command::new(env!("CARGO_BIN_EXE_exitrd"))
        .args(["prepare", "--from", "/x", "--payload", "/y"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
    fs::remove_dir_all(&base).unwrap();
}
