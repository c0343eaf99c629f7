use super::tree::MAX_TREE_NODES;
use super::*;
use crate::topology::block::{BlockDev, DevKind, DmKind};
use crate::topology::mountinfo;
use crate::topology::swaps::Swap;

fn dev(
    name: &str,
    major: u32,
    minor: u32,
    kind: DevKind,
    holders: &[&str],
    slaves: &[&str],
) -> BlockDev {
    BlockDev {
        name: name.into(),
        major,
        minor,
        kind,
        holders: holders.iter().map(|s| s.to_string()).collect(),
        slaves: slaves.iter().map(|s| s.to_string()).collect(),
    }
}

fn dm(name: &str, uuid: &str) -> DevKind {
    let kind = crate::topology::block::dm_kind(uuid);
    DevKind::Dm {
        name: name.into(),
        uuid: uuid.into(),
        kind,
    }
}

/// ext4 on LVM on LUKS2 on MD RAID1 of two disks, plus /boot on a partition.
fn lvm_luks_md(mountinfo_text: &str) -> Topology {
    let devices = [
        dev("vda", 254, 0, DevKind::Disk, &["md0"], &[]),
        dev("vdb", 254, 16, DevKind::Disk, &[], &[]),
        dev(
            "vdb1",
            254,
            17,
            DevKind::Partition {
                parent: Some("vdb".into()),
            },
            &["md0"],
            &[],
        ),
        dev(
            "md0",
            9,
            0,
            DevKind::Md {
                level: "raid1".into(),
            },
            &["dm-0"],
            &["vda", "vdb1"],
        ),
        dev(
            "dm-0",
            252,
            0,
            dm("md0_crypt", "CRYPT-LUKS2-abcd-md0_crypt"),
            &["dm-1"],
            &["md0"],
        ),
        dev("dm-1", 252, 1, dm("vg0-root", "LVM-xyz"), &[], &["dm-0"]),
        dev("vdc", 254, 32, DevKind::Disk, &[], &[]),
        dev(
            "vdc1",
            254,
            33,
            DevKind::Partition {
                parent: Some("vdc".into()),
            },
            &[],
            &[],
        ),
    ];
    topo_of(mountinfo_text, devices.into_iter().collect(), &[])
}

const LIVE_MOUNTINFO: &str = "\
22 1 252:1 / / rw,relatime - ext4 /dev/mapper/vg0-root rw
23 22 0:21 / /proc rw - proc proc rw
24 22 0:22 / /sys rw - sysfs sysfs rw
25 22 0:5 / /dev rw - devtmpfs udev rw
26 22 0:25 / /run rw - tmpfs tmpfs rw
27 22 254:33 / /boot rw - ext4 /dev/vdc1 rw
28 27 254:33 /efi /boot/efi\\040dir rw - ext4 /dev/vdc1 rw
";

fn described(p: &Plan) -> Vec<String> {
    p.steps.iter().map(|s| s.describe()).collect()
}

#[test]
fn live_lvm_luks_md_plan_is_top_down() {
    let topo = lvm_luks_md(LIVE_MOUNTINFO);
    let p = plan(&topo, &PlanOptions::live());
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(
        described(&p),
        vec![
            "unmount /boot/efi dir (ext4 on /dev/vdc1)",
            "unmount /boot (ext4 on /dev/vdc1)",
            "unmount / (ext4 on /dev/mapper/vg0-root)",
            "remove LVM volume vg0-root (dm-1)",
            "close dm-crypt mapping md0_crypt (dm-0) and free its key",
            "stop MD array md0 (raid1)",
        ]
    );
}

#[test]
fn every_step_respects_every_dependency() {
    let topo = lvm_luks_md(LIVE_MOUNTINFO);
    let p = plan(&topo, &PlanOptions::live());
    let pos = |pred: &dyn Fn(&Step) -> bool| p.steps.iter().position(pred).unwrap();
    let unmount_root =
        pos(&|s| matches!(s, Step::Unmount { mount_point, .. } if mount_point == "/"));
    let remove_lv = pos(&|s| s.closes_device() == Some("dm-1"));
    let close_crypt = pos(&|s| s.closes_device() == Some("dm-0"));
    let stop_md = pos(&|s| s.closes_device() == Some("md0"));
    assert!(unmount_root < remove_lv && remove_lv < close_crypt && close_crypt < stop_md);
}

#[test]
fn shutdown_scope_takes_only_oldroot_children_first() {
    let text = include_str!("../../tests/fixtures/exitrd-view/proc/self/mountinfo");
    let topo = lvm_luks_md(text);
    let p = plan(&topo, &PlanOptions::shutdown());
    let unmounts: Vec<&str> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Unmount { mount_point, .. } => Some(mount_point.as_lossy_str()),
            _ => None,
        })
        .collect();
    // Everything under /oldroot and nothing of the exitrd's own /dev, /sys, /proc, /run.
    assert_eq!(unmounts.len(), 17);
    assert!(unmounts.iter().all(|m| in_scope(m, "/oldroot")));
    assert_eq!(*unmounts.last().unwrap(), "/oldroot");
    let at = |m: &str| unmounts.iter().position(|x| *x == m).unwrap();
    assert!(at("/oldroot/dev/pts") < at("/oldroot/dev"));
    assert!(at("/oldroot/sys/fs/cgroup") < at("/oldroot/sys"));
    assert!(at("/oldroot/sys/kernel/security") < at("/oldroot/sys"));
    let closes: Vec<&str> = p.steps.iter().filter_map(|s| s.closes_device()).collect();
    assert_eq!(closes, vec!["dm-1", "dm-0", "md0"]);
}

#[test]
fn swap_goes_first_and_swap_file_before_its_mount() {
    let mut topo = lvm_luks_md(LIVE_MOUNTINFO);
    topo.swaps = vec![
        Swap {
            path: "/boot/swapfile".into(),
            kind: "file".into(),
        },
        Swap {
            path: "/dev/dm-1".into(),
            kind: "partition".into(),
        },
    ];
    let p = plan(&topo, &PlanOptions::live());
    assert_eq!(p.steps[0].describe(), "swapoff /boot/swapfile");
    assert_eq!(p.steps[1].describe(), "swapoff /dev/dm-1");
    assert!(matches!(&p.steps[1], Step::SwapOff { device: Some(d), .. } if d == "dm-1"));
}

#[test]
fn loop_is_detached_after_its_fs_and_before_the_mount_of_its_backing_file() {
    let text = "\
1 0 254:0 / / rw - ext4 /dev/vda rw
2 1 254:16 / /media rw - ext4 /dev/vdb rw
3 1 7:0 / /srv/image rw - ext4 /dev/loop0 rw
";
    let devices = [
        dev("vda", 254, 0, DevKind::Disk, &[], &[]),
        dev("vdb", 254, 16, DevKind::Disk, &[], &[]),
        dev(
            "loop0",
            7,
            0,
            DevKind::Loop {
                backing_file: Some("/media/disk.img".into()),
            },
            &[],
            &[],
        ),
        dev(
            "loop1",
            7,
            1,
            DevKind::Loop { backing_file: None },
            &[],
            &[],
        ),
    ];
    let topo = topo_of(text, devices.into_iter().collect(), &[]);
    let p = plan(&topo, &PlanOptions::live());
    assert_eq!(
        described(&p),
        vec![
            "unmount /srv/image (ext4 on /dev/loop0)",
            "detach loop device loop0 from /media/disk.img",
            "unmount /media (ext4 on /dev/vdb)",
            "unmount / (ext4 on /dev/vda)",
        ]
    );
}

#[test]
fn a_cycle_is_reported_and_the_plan_stays_complete() {
    // Two DM devices each claiming to hold the other: impossible in a real kernel.
    let devices = [
        dev("dm-0", 252, 0, dm("a", ""), &["dm-1"], &["dm-1"]),
        dev("dm-1", 252, 1, dm("b", ""), &["dm-0"], &["dm-0"]),
    ];
    let topo = topo_of("", devices.into_iter().collect(), &[]);
    let p = plan(&topo, &PlanOptions::live());
    assert_eq!(p.steps.len(), 2);
    assert_eq!(p.warnings.len(), 1);
}

#[test]
fn storage_tree_walks_down_to_the_disks() {
    let topo = lvm_luks_md(LIVE_MOUNTINFO);
    let opts = PlanOptions::live();
    let roots = storage_roots(&topo, &opts, &plan(&topo, &opts));
    assert_eq!(roots[0].used_as, "/");
    let t = &roots[0].tree;
    assert_eq!(
        (t.name.as_str(), t.what.as_str()),
        ("vg0-root", "LVM logical volume")
    );
    let crypt = &t.built_on[0];
    assert_eq!(
        (crypt.name.as_str(), crypt.what.as_str()),
        ("md0_crypt", "dm-crypt LUKS2")
    );
    let md = &crypt.built_on[0];
    assert_eq!(md.name, "md0");
    let under_md: Vec<&str> = md.built_on.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(under_md, vec!["vda", "vdb1"]);
    assert_eq!(md.built_on[1].built_on[0].name, "vdb");
}

fn tree_nodes(t: &DeviceTree) -> usize {
    1 + t.built_on.iter().map(tree_nodes).sum::<usize>()
}

/// Found by the `block` fuzz target: each device built on itself and on the other made a
/// storage tree of 2^33 nodes (the depth bound of 32 did not bound the width).
#[test]
fn a_storage_tree_with_cycles_shows_each_cycle_once() {
    let devices = [
        dev(
            "dm-0",
            252,
            0,
            dm("a", ""),
            &["dm-0", "dm-1"],
            &["dm-0", "dm-1"],
        ),
        dev(
            "dm-1",
            252,
            1,
            dm("b", ""),
            &["dm-0", "dm-1"],
            &["dm-0", "dm-1"],
        ),
    ];
    let topo = topo_of(
        "22 1 252:0 / / rw - ext4 /dev/dm-0 rw\n",
        devices.into_iter().collect(),
        &[],
    );
    let opts = PlanOptions::live();
    let roots = storage_roots(&topo, &opts, &plan(&topo, &opts));
    assert_eq!(roots[0].used_as, "/");
    let t = &roots[0].tree;
    // dm-0 on [dm-0 (cycle), dm-1 on [dm-0 (cycle), dm-1 (cycle)]]
    assert_eq!(tree_nodes(t), 5, "{t:#?}");
    assert!(t.built_on[0]
        .what
        .ends_with("(a cycle: it is built on itself)"));
    assert!(t.built_on[0].built_on.is_empty());
    assert_eq!(t.built_on[1].device, "dm-1");
    assert_eq!(t.built_on[1].built_on.len(), 2);
}

/// No cycle, but 40 levels of two devices, each built on both of the level below: the
/// tree would have 2^41 nodes; it stops at MAX_TREE_NODES.
#[test]
fn a_storage_tree_that_fans_out_level_after_level_is_bounded() {
    let name = |level: usize, i: usize| format!("dm-{}", 2 * level + i);
    let mut devices = Vec::new();
    for level in 0..40 {
        for i in 0..2 {
            let below: Vec<String> = if level < 39 {
                vec![name(level + 1, 0), name(level + 1, 1)]
            } else {
                Vec::new()
            };
            let above: Vec<String> = if level > 0 {
                vec![name(level - 1, 0), name(level - 1, 1)]
            } else {
                Vec::new()
            };
            let minor = (2 * level + i) as u32;
            let mut d = dev(
                &name(level, i),
                252,
                minor,
                dm(&name(level, i), ""),
                &[],
                &[],
            );
            d.slaves = below;
            d.holders = above;
            devices.push(d);
        }
    }
    let topo = topo_of("22 1 252:0 / / rw - ext4 /dev/dm-0 rw\n", devices, &[]);
    let opts = PlanOptions::live();
    let p = plan(&topo, &opts);
    assert_eq!(p.steps.len(), 81, "one unmount, 80 removals");
    let roots = storage_roots(&topo, &opts, &p);
    let nodes: usize = roots.iter().map(|r| tree_nodes(&r.tree)).sum();
    assert!(tree_nodes(&roots[0].tree) <= MAX_TREE_NODES, "{nodes}");
    assert!(nodes <= roots.len() * MAX_TREE_NODES, "{nodes}");
}

#[test]
fn scope_matching_is_by_path_component() {
    assert!(in_scope("/oldroot", "/oldroot"));
    assert!(in_scope("/oldroot/dev", "/oldroot"));
    assert!(!in_scope("/oldrootfs", "/oldroot"));
    assert!(in_scope("/anything", "/"));
}

fn topo_of(
    mountinfo_text: &str,
    devices: Vec<BlockDev>,
    md_bitmap_files: &[(&str, &str)],
) -> Topology {
    Topology {
        mounts: mountinfo::parse(mountinfo_text).unwrap(),
        swaps: Vec::new(),
        devices: devices.into_iter().map(|d| (d.name.clone(), d)).collect(),
        md_bitmap_files: md_bitmap_files
            .iter()
            .map(|(a, f)| (a.to_string(), f.to_string()))
            .collect(),
        warnings: Vec::new(),
        unreachable_loop_files: Default::default(),
    }
}

fn position(p: &Plan, text: &str) -> usize {
    let steps = described(p);
    steps
        .iter()
        .position(|s| s == text)
        .unwrap_or_else(|| panic!("no step {text:?} in {steps:#?}"))
}

/// live-boot's layout inside the exitrd: the root is an overlay whose lower layer is a
/// squashfs on a loop device whose file is on the boot medium, all mounted below the
/// overlay itself (in /run/live).
#[test]
fn live_system_moves_what_the_overlay_needs_out_of_the_way() {
    let text = "\
30 1 0:26 / / rw - tmpfs exitrd rw
29 30 0:40 / /oldroot ro - overlay overlay ro,lowerdir=/run/live/rootfs/filesystem.squashfs/,upperdir=/run/live/overlay/rw,workdir=/run/live/overlay/work
28 29 0:25 / /oldroot/run rw - tmpfs tmpfs rw
40 28 11:0 / /oldroot/run/live/medium ro - iso9660 /dev/sr0 ro
41 28 7:0 / /oldroot/run/live/rootfs/filesystem.squashfs ro - squashfs /dev/loop0 ro
42 28 0:41 / /oldroot/run/live/overlay rw - tmpfs tmpfs rw
";
    let devices = vec![
        dev("sr0", 11, 0, DevKind::Disk, &[], &[]),
        dev(
            "loop0",
            7,
            0,
            DevKind::Loop {
                backing_file: Some("/oldroot/run/live/medium/live/filesystem.squashfs".into()),
            },
            &[],
            &[],
        ),
    ];
    let topo = topo_of(text, devices, &[]);
    let p = plan(&topo, &PlanOptions::shutdown());
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let mv_medium = position(
        &p,
        "move /oldroot/run/live/medium out of the way to /exitrd-held/40 (still needed)",
    );
    let mv_squash = position(&p, "move /oldroot/run/live/rootfs/filesystem.squashfs out of the way to /exitrd-held/41 (still needed)");
    let mv_upper = position(
        &p,
        "move /oldroot/run/live/overlay out of the way to /exitrd-held/42 (still needed)",
    );
    let run = position(&p, "unmount /oldroot/run (tmpfs on tmpfs)");
    let root = position(&p, "unmount /oldroot (overlay on overlay)");
    let squash = position(&p, "unmount /exitrd-held/41 (squashfs on /dev/loop0)");
    let upper = position(&p, "unmount /exitrd-held/42 (tmpfs on tmpfs)");
    let detach = position(
        &p,
        "detach loop device loop0 from /oldroot/run/live/medium/live/filesystem.squashfs",
    );
    let medium = position(&p, "unmount /exitrd-held/40 (iso9660 on /dev/sr0)");
    assert!(mv_medium.max(mv_squash).max(mv_upper) < run);
    assert!(run < root && root < squash && root < upper);
    assert!(squash < detach && detach < medium);
    assert_eq!(p.steps.len(), 9);
}

/// The same system as the exitrd really finds it (trixie VM, systemd 257): systemd has
/// unmounted both overlay layers (the overlay keeps its own references to them) and moved
/// the busy medium to /run/shutdown/mounts. loop0 has no user in sight but the overlay.
#[test]
fn live_system_after_systemd_detaches_the_loop_after_the_overlay() {
    let text = "\
30 1 0:26 / / rw - tmpfs exitrd rw
29 30 0:40 / /oldroot ro - overlay overlay ro,lowerdir=/run/live/rootfs/filesystem.squashfs/,upperdir=/run/live/overlay/rw,workdir=/run/live/overlay/work
28 29 0:25 / /oldroot/run rw - tmpfs tmpfs rw
40 28 254:0 / /oldroot/run/shutdown/mounts/17b953cc00b2dc9c ro - ext4 /dev/vda ro
";
    let devices = vec![
        dev("vda", 254, 0, DevKind::Disk, &[], &[]),
        dev(
            "loop0",
            7,
            0,
            DevKind::Loop {
                backing_file: Some(
                    "/oldroot/run/shutdown/mounts/17b953cc00b2dc9c/live/filesystem.squashfs".into(),
                ),
            },
            &[],
            &[],
        ),
    ];
    let p = plan(&topo_of(text, devices, &[]), &PlanOptions::shutdown());
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let mv_medium = position(
        &p,
        "move /oldroot/run/shutdown/mounts/17b953cc00b2dc9c out of the way to /exitrd-held/40 (still needed)",
    );
    // /oldroot/run is moved too (the overlay's layer paths point into it): after the
    // medium below it, or the medium would go along with it.
    let mv_run = position(
        &p,
        "move /oldroot/run out of the way to /exitrd-held/28 (still needed)",
    );
    let root = position(&p, "unmount /oldroot (overlay on overlay)");
    let detach = position(&p, "detach loop device loop0 from /oldroot/run/shutdown/mounts/17b953cc00b2dc9c/live/filesystem.squashfs");
    let medium = position(&p, "unmount /exitrd-held/40 (ext4 on /dev/vda)");
    assert!(mv_medium < mv_run && mv_run < root && root < detach && detach < medium);
}

/// Debian Live with live-boot's `fetch=` (live-net, trixie): the squashfs was downloaded
/// into a ramfs on /run/live/medium, which systemd-shutdown detached lazily; the kernel
/// still names the file by its path within that ramfs. That path leads onto the old
/// root's overlay, which must not be taken for the file's holder: the overlay goes first
/// (it is loop0's only user), then loop0. Before the exitrd marked such paths, loop0 came
/// first and its detach failed ("still in use").
#[test]
fn live_system_whose_squashfs_was_fetched_into_a_detached_ramfs() {
    let text = "\
30 1 0:26 / / rw - tmpfs exitrd rw
29 30 0:40 / /oldroot ro - overlay overlay ro,lowerdir=/run/live/rootfs/filesystem.squashfs/,upperdir=/run/live/overlay/rw,workdir=/run/live/overlay/work
28 29 0:25 / /oldroot/run rw - tmpfs tmpfs rw
";
    let devices = vec![dev(
        "loop0",
        7,
        0,
        DevKind::Loop {
            backing_file: Some("/live/filesystem.squashfs".into()),
        },
        &[],
        &[],
    )];
    let mut topo = topo_of(text, devices, &[]);
    // Whether the overlay's unmount comes before loop0's detach, and the steps.
    let root_first = |topo: &Topology| {
        let p = plan(topo, &PlanOptions::shutdown());
        let first = position(&p, "unmount /oldroot (overlay on overlay)")
            < position(
                &p,
                "detach loop device loop0 from /live/filesystem.squashfs",
            );
        (first, p)
    };
    topo.unreachable_loop_files.insert("loop0".into());
    let (first, p) = root_first(&topo);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert!(first, "{:#?}", p.steps);
    // Unmarked, the path is taken for a file on the overlay: loop0 before it.
    topo.unreachable_loop_files.clear();
    let (first, p) = root_first(&topo);
    assert!(!first, "{:#?}", p.steps);
}

/// A live view of the same system (before the pivot) needs no move: nothing there is
/// taken down but the plan shows the same dependencies.
#[test]
fn overlay_layers_parse_escapes_and_new_syntax() {
    assert_eq!(
        overlay_layers("rw,lowerdir=/a\\:b:/c,upperdir=/u\\,v,workdir=/w,redirect_dir=on"),
        vec!["/a:b", "/c", "/u,v", "/w"]
    );
    assert_eq!(
        overlay_layers("ro,lowerdir+=/l1,lowerdir+=/l2,datadir+=/d"),
        vec!["/l1", "/l2", "/d"]
    );
    assert!(overlay_layers("rw,relatime").is_empty());
}

/// Root on an MD RAID1 whose write-intent bitmap is a file on another disk's file
/// system, mounted below the root: the array must stop before that file system goes.
#[test]
fn md_external_bitmap_stops_the_array_before_unmounting_the_bitmap() {
    let text = "\
30 1 0:26 / / rw - tmpfs exitrd rw
29 30 9:0 / /oldroot ro - ext4 /dev/md0 ro
31 29 254:33 / /oldroot/bitmap rw - ext4 /dev/vdc1 rw
";
    let devices = vec![
        dev("vda", 254, 0, DevKind::Disk, &["md0"], &[]),
        dev("vdb", 254, 16, DevKind::Disk, &["md0"], &[]),
        dev("vdc", 254, 32, DevKind::Disk, &[], &[]),
        dev(
            "vdc1",
            254,
            33,
            DevKind::Partition {
                parent: Some("vdc".into()),
            },
            &[],
            &[],
        ),
        dev(
            "md0",
            9,
            0,
            DevKind::Md {
                level: "raid1".into(),
            },
            &[],
            &["vda", "vdb"],
        ),
    ];
    let topo = topo_of(text, devices, &[("md0", "/oldroot/bitmap/md0.bitmap")]);
    let p = plan(&topo, &PlanOptions::shutdown());
    assert_eq!(
        described(&p),
        vec![
            "move /oldroot/bitmap out of the way to /exitrd-held/31 (still needed)",
            "unmount /oldroot (ext4 on /dev/md0)",
            "stop MD array md0 (raid1)",
            "unmount /exitrd-held/31 (ext4 on /dev/vdc1)",
        ]
    );
}

/// The runtime logs these lines as each step is done, and the VM tests match them whole.
#[test]
fn every_step_says_what_was_done_in_the_words_the_vm_tests_match() {
    let steps = [
        Step::MoveOut {
            mount_point: "/oldroot/run/media".into(),
            to: "/exitrd-held/31".into(),
        },
        Step::SwapOff {
            path: "/dev/dm-2".into(),
            device: Some("dm-2".into()),
        },
        Step::Unmount {
            mount_point: "/oldroot".into(),
            fstype: "ext4".into(),
            source: "/dev/mapper/vg0-root".into(),
            device: Some("dm-1".into()),
        },
        Step::RemoveDm {
            device: "dm-1".into(),
            name: "vg0-root".into(),
            kind: DmKind::Lvm,
        },
        Step::RemoveDm {
            device: "dm-0".into(),
            name: "md0_crypt".into(),
            kind: DmKind::Crypt,
        },
        Step::RemoveDm {
            device: "dm-3".into(),
            name: "late-top".into(),
            kind: DmKind::Other,
        },
        Step::StopMd {
            device: "md0".into(),
            level: "raid1".into(),
        },
        Step::DetachLoop {
            device: "loop0".into(),
            backing_file: "/oldroot/run/late1.img".into(),
        },
        Step::DisconnectNbd {
            device: "nbd0".into(),
        },
        Step::LogoutIscsi {
            device: "sda".into(),
            other_disks: Vec::new(),
            session: 1,
            target: Some("iqn.2026-01.test:root".into()),
            portal: Some("10.0.2.2:3260".into()),
        },
    ];
    let done: Vec<String> = steps.iter().map(|s| s.describe_done()).collect();
    assert_eq!(
        done,
        vec![
            "moved /oldroot/run/media to /exitrd-held/31: still needed",
            "swapoff /dev/dm-2",
            "unmounted /oldroot (ext4 on /dev/mapper/vg0-root)",
            "removed LVM volume vg0-root (dm-1)",
            "closed dm-crypt mapping md0_crypt (dm-0): key wiped from memory",
            "removed device-mapper device late-top (dm-3)",
            "stopped MD array md0 (raid1)",
            "detached loop device loop0 from /oldroot/run/late1.img",
            "disconnected network block device nbd0",
            "logged out of iSCSI session 1 (iqn.2026-01.test:root on 10.0.2.2:3260): disk sda gone",
        ]
    );
    // A session the target did not see out: the line says so, and why.
    assert_eq!(
        steps[9].describe_dropped("the target did not answer within 5.0s"),
        "dropped iSCSI session 1 (iqn.2026-01.test:root on 10.0.2.2:3260) without a \
         logout: the target did not answer within 5.0s; disk sda gone"
    );
}

fn iscsi(session: u32) -> DevKind {
    DevKind::Iscsi {
        session,
        target: Some("iqn.2026-01.test:root".into()),
        address: Some("10.0.2.2".into()),
        port: Some(3260),
    }
}

/// The root on LVM on an iSCSI disk's partition, /boot on another partition of it, as the
/// exitrd sees it: the volume goes after the unmounts, the logout after the volume.
#[test]
fn lvm_on_an_iscsi_disk_unmounts_removes_the_lv_then_logs_out() {
    let part = |name: &str, minor, holders: &[&str]| {
        let parent = Some("sda".to_string());
        dev(name, 8, minor, DevKind::Partition { parent }, holders, &[])
    };
    let topo = topo_of(
        "1 0 0:30 / / rw - tmpfs tmpfs rw\n\
         40 1 252:0 / /oldroot rw - ext4 /dev/mapper/vg0-root rw\n\
         41 40 8:2 / /oldroot/boot rw - ext4 /dev/sda2 rw\n",
        vec![
            dev("sda", 8, 0, iscsi(1), &[], &[]),
            part("sda1", 1, &["dm-0"]),
            part("sda2", 2, &[]),
            dev("dm-0", 252, 0, dm("vg0-root", "LVM-xyz"), &[], &["sda1"]),
        ],
        &[],
    );
    let p = plan(&topo, &PlanOptions::shutdown());
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(
        described(&p),
        vec![
            "unmount /oldroot/boot (ext4 on /dev/sda2)",
            "unmount /oldroot (ext4 on /dev/mapper/vg0-root)",
            "remove LVM volume vg0-root (dm-0)",
            "log out of iSCSI session 1 (iqn.2026-01.test:root on 10.0.2.2:3260) and remove \
             its disk sda",
        ]
    );
    assert_eq!(
        p.steps.last(),
        Some(&Step::LogoutIscsi {
            device: "sda".into(),
            other_disks: Vec::new(),
            session: 1,
            target: Some("iqn.2026-01.test:root".into()),
            portal: Some("10.0.2.2:3260".into()),
        })
    );
}

/// A target with two LUNs: one logout for the session, after everything on either disk,
/// however the two stacks are ordered; another session's disk gets its own.
#[test]
fn a_session_with_two_disks_is_logged_out_once_after_both() {
    let topo = topo_of(
        "1 0 0:30 / / rw - tmpfs tmpfs rw\n\
         40 1 252:0 / /oldroot rw - ext4 /dev/mapper/vg0-root rw\n\
         41 40 8:16 / /oldroot/srv rw - ext4 /dev/sdb rw\n\
         42 40 8:32 / /oldroot/data rw - xfs /dev/sdc rw\n",
        vec![
            dev("sda", 8, 0, iscsi(1), &["dm-0"], &[]),
            dev("sdb", 8, 16, iscsi(1), &[], &[]),
            dev("sdc", 8, 32, iscsi(2), &[], &[]),
            dev("dm-0", 252, 0, dm("vg0-root", "LVM-xyz"), &[], &["sda"]),
        ],
        &[],
    );
    let p = plan(&topo, &PlanOptions::shutdown());
    let logouts: Vec<&Step> = p
        .steps
        .iter()
        .filter(|s| matches!(s, Step::LogoutIscsi { .. }))
        .collect();
    assert_eq!(logouts.len(), 2, "{:#?}", p.steps);
    let session1 = p
        .steps
        .iter()
        .position(|s| matches!(s, Step::LogoutIscsi { session: 1, .. }))
        .unwrap();
    let mut disks = p.steps[session1].closes_devices();
    disks.sort_unstable();
    assert_eq!(disks, vec!["sda", "sdb"]);
    for needed in [
        "unmount /oldroot/srv (ext4 on /dev/sdb)",
        "remove LVM volume vg0-root (dm-0)",
    ] {
        assert!(position(&p, needed) < session1, "{:#?}", p.steps);
    }
    assert!(described(&p)[session1].ends_with("and remove its disks sda, sdb"));
    let session2 = p
        .steps
        .iter()
        .position(|s| matches!(s, Step::LogoutIscsi { session: 2, .. }))
        .unwrap();
    assert!(position(&p, "unmount /oldroot/data (xfs on /dev/sdc)") < session2);
}

/// What the runtime drops at the very end when writes still wait on a target: one step
/// per session, its disks all named, whatever still uses them.
#[test]
fn every_session_is_found_for_the_last_resort_drop() {
    let topo = topo_of(
        "1 0 0:30 / / rw - tmpfs tmpfs rw\n",
        vec![
            dev("sda", 8, 0, iscsi(1), &["dm-0"], &[]),
            dev("sdb", 8, 16, iscsi(1), &[], &[]),
            dev("sdc", 8, 32, iscsi(2), &[], &[]),
            dev("dm-0", 252, 0, dm("vg0-root", "LVM-xyz"), &[], &["sda"]),
        ],
        &[],
    );
    let steps = iscsi_sessions(&topo);
    let sessions: Vec<(u32, Vec<&str>)> = steps
        .iter()
        .filter_map(|s| match s {
            Step::LogoutIscsi { session, .. } => {
                let mut disks = s.closes_devices();
                disks.sort_unstable();
                Some((*session, disks))
            }
            _ => None,
        })
        .collect();
    assert_eq!(sessions, vec![(1, vec!["sda", "sdb"]), (2, vec!["sdc"])]);
}

/// Mount points need not be UTF-8: scopes compare bytes, so two paths that differ only in
/// such a byte are not taken for one another.
#[test]
fn scopes_compare_bytes() {
    assert!(in_scope(&b"/mnt/caf\xe9/sub"[..], &b"/mnt/caf\xe9"[..]));
    assert!(!in_scope(&b"/mnt/caf\xe8/sub"[..], &b"/mnt/caf\xe9"[..]));
    assert!(in_scope(&b"/mnt/caf\xe9"[..], "/mnt/"));
}

/// A mount point that is not UTF-8 reaches its step with its exact bytes: `umount2` must
/// get the path the kernel knows, not one with U+FFFD in place of the odd bytes. The two
/// mount points here differ only in a byte that is not UTF-8.
#[test]
fn unmount_steps_carry_mount_points_that_are_not_utf8_exactly() {
    let topo = topo_of(
        "22 1 252:1 / / rw - ext4 /dev/vda1 rw\n\
         30 22 254:1 / /mnt/caf\\351 rw - ext4 /dev/vdb1 rw\n\
         31 22 254:2 / /mnt/caf\\350 rw - ext4 /dev/vdb2 rw\n",
        Vec::new(),
        &[],
    );
    let p = plan(&topo, &PlanOptions::live());
    let unmounted: Vec<&[u8]> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Unmount { mount_point, .. } => Some(mount_point.as_bytes()),
            _ => None,
        })
        .collect();
    assert_eq!(
        unmounted,
        vec![&b"/mnt/caf\xe8"[..], &b"/mnt/caf\xe9"[..], &b"/"[..]]
    );
}
