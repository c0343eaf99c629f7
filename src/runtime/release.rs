//! Letting go of the memory file systems once the teardown is over. systemd's switch into
//! the exitrd binds the old system's `/run` (and `/dev`, with `/dev/shm` in it) into our
//! root: unmounting `/oldroot/run` alone leaves that tmpfs alive through our `/run`, with
//! whatever was written there, and `init_on_free=1` (Tails' RAM erasure) only clears
//! memory that is freed. Our own root, the payload, is all that stays.

use crate::runtime::worker::{bounded, Outcome};
use crate::say;
use crate::topology::mountinfo::Mount;
use crate::topology::Topology;
use nix::mount::{umount2, MntFlags};
use std::io;
use std::path::Path;
use std::time::Duration;

/// File systems whose contents live in RAM.
const MEMORY_FS: [&str; 3] = ["tmpfs", "ramfs", "hugetlbfs"];

/// The memory file systems to unmount, deepest first: every one but our root, whether
/// below `/oldroot` (left by the teardown) or in our own tree (`/run`, `/dev/shm`).
pub fn memory_mounts(topo: &Topology) -> Vec<&Mount> {
    let mut v: Vec<&Mount> = topo
        .mounts
        .iter()
        .filter(|m| MEMORY_FS.contains(&m.fstype.as_str()) && m.mount_point.as_bytes() != b"/")
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.mount_point.as_bytes().len()));
    v
}

/// Unmounts them, each bounded; a busy one is detached, to be freed with its last user.
pub fn release(topo: &Topology, timeout: Duration) {
    for m in memory_mounts(topo) {
        let path = m.mount_point.as_path().to_path_buf();
        let p = path.clone();
        let outcome = bounded(timeout, move || unmount(&p, MntFlags::empty()));
        let what = format!("{} ({})", m.mount_point, m.fstype);
        match outcome {
            Outcome::Done | Outcome::Gone => say!("unmounted {what}: its memory is freed"),
            _ => {
                let p = path.clone();
                match bounded(timeout, move || unmount(&p, MntFlags::MNT_DETACH)) {
                    Outcome::Done | Outcome::Gone => say!(
                        "detached busy {what} lazily ({outcome}): freed when its last user goes"
                    ),
                    other => say!("could not unmount {what}: {other}"),
                }
            }
        }
    }
}

fn unmount(path: &Path, flags: MntFlags) -> io::Result<()> {
    umount2(path, flags | MntFlags::UMOUNT_NOFOLLOW).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::mountinfo;

    #[test]
    fn every_memory_file_system_but_our_root_deepest_first() {
        let table = "\
1 0 0:30 / / rw - tmpfs tmpfs rw\n\
2 1 0:5 / /dev rw - devtmpfs udev rw\n\
3 2 0:24 / /dev/shm rw - tmpfs tmpfs rw\n\
4 1 0:25 / /run rw - tmpfs tmpfs rw\n\
5 1 0:20 / /proc rw - proc proc rw\n\
6 1 252:1 / /oldroot rw - ext4 /dev/mapper/vg0-root rw\n\
7 6 0:26 / /oldroot/tmp rw - tmpfs tmpfs rw\n\
8 2 0:27 / /dev/hugepages rw - hugetlbfs hugetlbfs rw\n";
        let topo = Topology {
            mounts: mountinfo::parse(table).unwrap(),
            ..Topology::default()
        };
        let got: Vec<String> = memory_mounts(&topo)
            .iter()
            .map(|m| m.mount_point.to_string())
            .collect();
        assert_eq!(got, ["/dev/hugepages", "/oldroot/tmp", "/dev/shm", "/run"]);
    }
}
