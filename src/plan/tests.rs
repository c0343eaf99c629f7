use super::*;
use crate::topology::block::BlockDev;
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
    let kind = if uuid.starts_with("LVM-") {
        DmKind::Lvm
    } else if uuid.starts_with("CRYPT-") {
        DmKind::Crypt
    } else {
        DmKind::Other
    };
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
    Topology {
        mounts: mountinfo::parse(mountinfo_text).unwrap(),
        swaps: Vec::new(),
        devices: devices.into_iter().map(|d| (d.name.clone(), d)).collect(),
        warnings: Vec::new(),
    }
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
            "close dm-crypt mapping md0_crypt (dm-0), key wiped",
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
            Step::Unmount { mount_point, .. } => Some(mount_point.as_str()),
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
    let topo = Topology {
        mounts: mountinfo::parse(text).unwrap(),
        swaps: Vec::new(),
        devices: devices.into_iter().map(|d| (d.name.clone(), d)).collect(),
        warnings: Vec::new(),
    };
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
    let topo = Topology {
        mounts: Vec::new(),
        swaps: Vec::new(),
        devices: devices.into_iter().map(|d| (d.name.clone(), d)).collect(),
        warnings: Vec::new(),
    };
    let p = plan(&topo, &PlanOptions::live());
    assert_eq!(p.steps.len(), 2);
    assert_eq!(p.warnings.len(), 1);
}

#[test]
fn storage_tree_walks_down_to_the_disks() {
    let topo = lvm_luks_md(LIVE_MOUNTINFO);
    let roots = storage_roots(&topo, &PlanOptions::live());
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

#[test]
fn scope_matching_is_by_path_component() {
    assert!(in_scope("/oldroot", "/oldroot"));
    assert!(in_scope("/oldroot/dev", "/oldroot"));
    assert!(!in_scope("/oldrootfs", "/oldroot"));
    assert!(in_scope("/anything", "/"));
}
