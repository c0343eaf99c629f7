//! Trusting a hook before it goes into an image. A hook runs as root at every shutdown,
//! from a copy in the payload that nothing checks again; if anybody but root could have
//! changed it (or a directory on its way, or what a symlink to it leads to), it is a
//! root shell for them. The initramfs-tools hook asks `exitrd check-hook` about every
//! hook in `/etc/exitrd/hooks/` and `/usr/share/exitrd/hooks/` and leaves out the ones
//! refused, with a message saying which file and what to run.

use crate::payload::resolve_within;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Checks the hook at `hook` (absolute, as the system below `root` sees it). Every path
/// looked at to reach the file (`root` itself, each directory, each symlink's target)
/// must be owned by root and not writable by group or others; symlinks themselves are
/// not judged (their mode means nothing; their directory is checked). Err is the whole
/// message, without the `exitrd:` prefix.
pub fn check_hook(root: &Path, hook: &Path) -> Result<(), String> {
    check_hook_owned_by(root, hook, 0)
}

/// [`check_hook`] with another trusted owner than root: tests that do not run as root
/// create fixtures they own.
fn check_hook_owned_by(root: &Path, hook: &Path, owner: u32) -> Result<(), String> {
    let shown = hook.display();
    let (trusted, chown_to) = if owner == 0 {
        ("root".to_string(), "root".to_string())
    } else {
        (format!("uid {owner}"), owner.to_string())
    };
    if !hook.is_absolute() {
        return Err(format!(
            "refusing hook {shown}: not an absolute path; give it as /etc/exitrd/hooks/STAGE/NAME"
        ));
    }
    // What the system calls a path below `root`.
    let system_path =
        |p: &Path| -> PathBuf { Path::new("/").join(p.strip_prefix(root).unwrap_or(p)) };
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    let real = resolve_within(root, hook, &mut |path, meta| {
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let name = system_path(path);
        let whose = if name == hook {
            String::new()
        } else {
            format!("{} ", name.display())
        };
        if meta.uid() != owner {
            problems.push(format!("{whose}owned by uid {}, not {trusted}", meta.uid()));
            fixes.push(format!("chown {chown_to} {}", name.display()));
        }
        let writable = match (meta.mode() & 0o020 != 0, meta.mode() & 0o002 != 0) {
            (true, true) => Some("group and others"),
            (true, false) => Some("group"),
            (false, true) => Some("others"),
            (false, false) => None,
        };
        if let Some(by) = writable {
            problems.push(format!("{whose}writable by {by}"));
            fixes.push(format!("chmod go-w {}", name.display()));
        }
        Ok(())
    })
    .map_err(|e| {
        format!(
            "refusing hook {shown}: {e} (symbolic links followed below {}); fix or remove it",
            root.display()
        )
    })?;
    if !fs::symlink_metadata(&real).is_ok_and(|m| m.is_file()) {
        return Err(format!(
            "refusing hook {shown}: {} is not a regular file; hooks are executable files",
            system_path(&real).display()
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "refusing hook {shown}: {}; it runs as root at every shutdown. Run {}, check the \
         file is yours, then update-initramfs -u",
        problems.join(", "),
        fixes.join(" && ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// A fixture root with `/etc/exitrd/hooks/final/x`, all 0755 and owned by whoever runs
    /// the test.
    fn fixture(name: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("exitrd-hookcheck-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = root.join("etc/exitrd/hooks/final");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("x"), "#!/bin/sh\n").unwrap();
        for p in [
            root.clone(),
            root.join("etc"),
            root.join("etc/exitrd"),
            root.join("etc/exitrd/hooks"),
            dir.clone(),
            dir.join("x"),
        ] {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        root
    }

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    const HOOK: &str = "/etc/exitrd/hooks/final/x";

    /// Who owns the fixture: the trusted owner for the tests that are about modes.
    fn me(root: &Path) -> u32 {
        fs::metadata(root).unwrap().uid()
    }

    /// Gives `p` to uid 1000. Only root can, and the tests run as root (sh scripts/test);
    /// as anyone else this says so plainly rather than pass without checking.
    fn give_away(p: &Path) {
        std::os::unix::fs::chown(p, Some(1000), None)
            .expect("this test chowns a file to uid 1000: run it as root");
    }

    #[test]
    fn a_hook_owned_by_root_and_writable_by_it_only_is_accepted() {
        let root = fixture("ok");
        check_hook_owned_by(&root, Path::new(HOOK), me(&root)).unwrap();
        // Through a symlink to a file that is just as safe.
        fs::create_dir_all(root.join("usr/lib/pkg")).unwrap();
        fs::write(root.join("usr/lib/pkg/h"), "").unwrap();
        chmod(&root.join("usr/lib/pkg/h"), 0o755);
        symlink("/usr/lib/pkg/h", root.join("etc/exitrd/hooks/final/y")).unwrap();
        check_hook_owned_by(&root, Path::new("/etc/exitrd/hooks/final/y"), me(&root)).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_a_hook_writable_by_group_or_others_and_says_what_to_run() {
        let root = fixture("writable");
        let x = root.join(&HOOK[1..]);
        chmod(&x, 0o775);
        let err = check_hook_owned_by(&root, Path::new(HOOK), me(&root)).unwrap_err();
        assert_eq!(
            err,
            "refusing hook /etc/exitrd/hooks/final/x: writable by group; it runs as root at \
             every shutdown. Run chmod go-w /etc/exitrd/hooks/final/x, check the file is \
             yours, then update-initramfs -u"
        );
        chmod(&x, 0o757);
        let err = check_hook_owned_by(&root, Path::new(HOOK), me(&root)).unwrap_err();
        assert!(err.contains(": writable by others;"), "{err}");
        chmod(&x, 0o755);
        // A directory on the way: the file in it can be replaced.
        chmod(&root.join("etc/exitrd/hooks"), 0o777);
        let err = check_hook_owned_by(&root, Path::new(HOOK), me(&root)).unwrap_err();
        assert!(
            err.contains(": /etc/exitrd/hooks writable by group and others;")
                && err.contains("Run chmod go-w /etc/exitrd/hooks,"),
            "{err}"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_a_hook_not_owned_by_root() {
        let root = fixture("owner");
        let x = root.join(&HOOK[1..]);
        give_away(&x);
        let err = check_hook(&root, Path::new(HOOK)).unwrap_err();
        assert!(
            err.contains(": owned by uid 1000, not root;")
                && err.contains("Run chown root /etc/exitrd/hooks/final/x,"),
            "{err}"
        );
        // Both at once: one line, both fixes.
        chmod(&x, 0o775);
        let err = check_hook(&root, Path::new(HOOK)).unwrap_err();
        assert!(
            err.contains(": owned by uid 1000, not root, writable by group;")
                && err.contains(
                    "chown root /etc/exitrd/hooks/final/x && chmod go-w /etc/exitrd/hooks/final/x"
                ),
            "{err}"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_symlinked_hook_is_judged_by_what_it_leads_to_below_the_root() {
        let root = fixture("link");
        let x = root.join(&HOOK[1..]);
        fs::remove_file(&x).unwrap();
        fs::create_dir_all(root.join("home/u")).unwrap();
        fs::write(root.join("home/u/h"), "").unwrap();
        chmod(&root.join("home/u/h"), 0o755);
        give_away(&root.join("home/u"));
        symlink("/home/u/h", &x).unwrap();
        let err = check_hook(&root, Path::new(HOOK)).unwrap_err();
        assert!(
            err.contains(": /home/u owned by uid 1000, not root;"),
            "{err}"
        );
        // A link out of the root (into the running system) leads nowhere.
        fs::remove_file(&x).unwrap();
        symlink(std::env::current_exe().unwrap(), &x).unwrap();
        let err = check_hook(&root, Path::new(HOOK)).unwrap_err();
        assert!(
            err.starts_with("refusing hook /etc/exitrd/hooks/final/x: ")
                && err.contains("No such file"),
            "{err}"
        );
        // Not a file at all.
        fs::remove_file(&x).unwrap();
        fs::create_dir(&x).unwrap();
        chmod(&x, 0o755);
        let err = check_hook(&root, Path::new(HOOK)).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        // Relative paths are not guessed at.
        let err = check_hook(&root, Path::new("final/x")).unwrap_err();
        assert!(err.contains("not an absolute path"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }
}
