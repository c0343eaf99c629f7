//! Fixture trees for unit tests: the files of a root (`/proc`, `/sys`, `/etc`, `/run`)
//! under a fresh temporary directory, for the code that takes a root path.

use std::path::PathBuf;

/// A tree of files under a fresh temporary directory named after `tag`; a content
/// starting with `->` makes a symlink, as sysfs has them.
pub fn tree(tag: &str, files: &[(&str, &str)]) -> PathBuf {
    let root = std::env::temp_dir().join(format!("exitrd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("a relative path with a parent"))
            .expect("creating a fixture directory");
        match text.strip_prefix("->") {
            Some(target) => std::os::unix::fs::symlink(target, &p).expect("a fixture symlink"),
            None => std::fs::write(&p, text).expect("a fixture file"),
        }
    }
    root
}
