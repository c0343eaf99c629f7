//! The initramfs-tools side, run outside an image build: the hook functions put a hook and
//! the tools it needs into a payload directory, and the scripts pass `sh -n`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn scripts_parse_and_answer_prereqs() {
    for script in [
        "initramfs-tools/hooks/exitrd",
        "initramfs-tools/scripts/init-bottom/exitrd",
    ] {
        let ok = Command::new("sh")
            .arg("-n")
            .arg(repo(script))
            .status()
            .unwrap();
        assert!(ok.success(), "{script} does not parse");
        let out = Command::new("sh")
            .arg(repo(script))
            .arg("prereqs")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "", "{script}");
    }
}

#[test]
fn add_hook_copies_the_hook_its_interpreter_and_libraries() {
    let dest = std::env::temp_dir().join(format!("exitrd-destdir-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dest);
    fs::create_dir_all(&dest).unwrap();
    let hook = dest.join("50-export");
    fs::write(&hook, "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let script = format!(
        ". {}\nexitrd_add_hook unmounted {}\n! exitrd_add_hook sometime {} 2>/dev/null\n",
        repo("share/hook-functions").display(),
        hook.display(),
        hook.display()
    );
    run_hook_functions(&script, &dest);
    let payload = dest.join("exitrd");
    let copied = payload.join("hooks/unmounted/50-export");
    assert_eq!(fs::read_to_string(copied).unwrap(), "#!/bin/sh\necho hi\n");
    assert!(
        payload.join("bin/sh").exists(),
        "the interpreter is in the payload"
    );
    // /bin/sh is dynamically linked on Debian: its C library came along.
    let ldd = Command::new("ldd").arg("/bin/sh").output().unwrap();
    let needs_libc = String::from_utf8_lossy(&ldd.stdout).contains("libc.so.6");
    if needs_libc {
        let found = Command::new("find")
            .arg(&payload)
            .args(["-name", "libc.so.6"])
            .output()
            .unwrap();
        assert!(!found.stdout.is_empty(), "libc.so.6 not copied");
    }
    fs::remove_dir_all(&dest).unwrap();
}

#[test]
fn add_hook_and_add_tool_never_write_through_a_symlink_in_the_payload() {
    let base = std::env::temp_dir().join(format!("exitrd-destlink-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let (dest, outside) = (base.join("destdir"), base.join("outside"));
    fs::create_dir_all(dest.join("exitrd/hooks/final")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    let hook = base.join("99-hook");
    fs::write(&hook, "echo hook\n").unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let tool = base.join("tool");
    fs::write(&tool, "tool\n").unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    // Links already in the payload where the copies go, one to a file, one dangling.
    fs::write(outside.join("victim"), "precious").unwrap();
    std::os::unix::fs::symlink(
        outside.join("victim"),
        dest.join("exitrd/hooks/final/99-hook"),
    )
    .unwrap();
    let tool_in_payload =
        Path::new(&format!("{}/exitrd{}", dest.display(), tool.display())).to_path_buf();
    fs::create_dir_all(tool_in_payload.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(outside.join("new"), &tool_in_payload).unwrap();
    let script = format!(
        ". {}\nexitrd_add_hook final {}\nexitrd_add_tool {}\n",
        repo("share/hook-functions").display(),
        hook.display(),
        tool.display()
    );
    run_hook_functions(&script, &dest);
    assert_eq!(
        fs::read_to_string(outside.join("victim")).unwrap(),
        "precious"
    );
    assert!(!outside.join("new").exists());
    let copied = dest.join("exitrd/hooks/final/99-hook");
    assert!(fs::symlink_metadata(&copied).unwrap().is_file());
    assert_eq!(fs::read_to_string(copied).unwrap(), "echo hook\n");
    assert!(fs::symlink_metadata(&tool_in_payload).unwrap().is_file());
    assert_eq!(fs::read_to_string(&tool_in_payload).unwrap(), "tool\n");
    fs::remove_dir_all(&base).unwrap();
}

/// `exitrd check-hook`, as the initramfs-tools hook runs it for every hook it adds.
/// The fixture must be root-owned to be accepted: the tests run as root (sh scripts/test).
#[test]
fn check_hook_refuses_hooks_others_could_change_and_says_what_to_run() {
    let root = std::env::temp_dir().join(format!("exitrd-checkhook-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let dir = root.join("etc/exitrd/hooks/final");
    fs::create_dir_all(&dir).unwrap();
    for (name, mode) in [("good", 0o755), ("loose", 0o775)] {
        fs::write(dir.join(name), "#!/bin/sh\n").unwrap();
        fs::set_permissions(dir.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    for d in [
        "",
        "etc",
        "etc/exitrd",
        "etc/exitrd/hooks",
        "etc/exitrd/hooks/final",
    ] {
        fs::set_permissions(root.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let check = |hook: &str| {
        Command::new(env!("CARGO_BIN_EXE_exitrd"))
            .args(["check-hook", "--root"])
            .arg(&root)
            .arg(hook)
            .output()
            .unwrap()
    };
    let out = check("/etc/exitrd/hooks/final/good");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr} (run as root?)");
    assert_eq!(stderr, "");
    let out = check("/etc/exitrd/hooks/final/loose");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with(
            "exitrd: refusing hook /etc/exitrd/hooks/final/loose: writable by group; it runs \
             as root at every shutdown. Run chmod go-w /etc/exitrd/hooks/final/loose,"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_dir_all(&root).unwrap();
}

/// Runs `script` (which sources share/hook-functions) with `DESTDIR=dest`; it must succeed.
fn run_hook_functions(script: &str, dest: &Path) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .env("DESTDIR", dest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
