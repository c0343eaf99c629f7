//! `exitrd plan` as an admin runs it, on fixture trees captured in the VMs.

use std::path::Path;
use std::process::Command;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn plan(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_exitrd"))
        .arg("plan")
        .args(args)
        .output()
        .expect("run exitrd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `exitrd plan --root tests/fixtures/NAME`, which must succeed.
fn plan_text(name: &str) -> String {
    let root = fixture(name);
    let (code, text, _) = plan(&["--root", root.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    text
}

/// The numbered steps of `exitrd plan --root tests/fixtures/NAME`, without their numbers.
fn steps_of(name: &str) -> Vec<String> {
    plan_text(name)
        .lines()
        .filter_map(|l| l.trim().split_once(". "))
        .filter(|(n, _)| n.parse::<usize>().is_ok())
        .map(|(_, s)| s.to_string())
        .collect()
}

/// Where the step `wanted` is (a trailing `…` matches any rest of the line).
fn step_at(steps: &[String], wanted: &str) -> usize {
    let found = match wanted.strip_suffix('…') {
        Some(prefix) => steps.iter().position(|s| s.starts_with(prefix)),
        None => steps.iter().position(|s| s == wanted),
    };
    found.unwrap_or_else(|| panic!("no step {wanted:?} in {steps:#?}"))
}

#[test]
fn exitrd_view_unmounts_oldroot_last_and_json_matches_text() {
    let root = fixture("exitrd-view");
    let (code, text, _) = plan(&["--root", root.to_str().unwrap(), "--exitrd-view"]);
    assert_eq!(code, 0);
    let steps: Vec<&str> = text.lines().filter(|l| l.contains(". unmount ")).collect();
    assert_eq!(steps.len(), 17, "{text}");
    assert!(steps[16].ends_with("unmount /oldroot (ext4 on /dev/mapper/vg0-root)"));
    let (code, json, _) = plan(&["--root", root.to_str().unwrap(), "--exitrd-view", "--json"]);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["scope"], "/oldroot");
    assert_eq!(doc["steps"].as_array().unwrap().len(), 17);
    assert_eq!(doc["steps"][16]["action"], "unmount");
    assert_eq!(doc["steps"][16]["mount_point"], "/oldroot");
}

#[test]
fn a_missing_tree_is_an_error_that_names_the_file() {
    let (code, _, err) = plan(&["--root", "/nonexistent-exitrd-root"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent-exitrd-root/proc/self/mountinfo"),
        "{err}"
    );
}

#[test]
fn shutdown_mode_refuses_when_not_pid1() {
    let out = Command::new(env!("CARGO_BIN_EXE_exitrd"))
        .args(["shutdown", "poweroff"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing"));
}

#[test]
fn lvm_luks_md_fixture_from_the_vm_plans_top_down() {
    let steps = steps_of("lvm-luks-md");
    let text = plan_text("lvm-luks-md");
    let root = fixture("lvm-luks-md");
    let at = |s: &str| step_at(&steps, s);
    let unmount_root = at("unmount / (ext4 on /dev/mapper/vg0-root)");
    let remove_lv = at("remove LVM volume vg0-root (dm-1)");
    let close_luks = at("close dm-crypt mapping md0_crypt (dm-0) and free its key");
    let stop_md = at("stop MD array md0 (raid1)");
    assert!(unmount_root < remove_lv && remove_lv < close_luks && close_luks < stop_md);
    assert_eq!(
        stop_md,
        steps.len() - 1,
        "stopping the array is the last step"
    );
    // The tree names the whole stack down to both disks.
    for line in [
        "└─ vg0-root (dm-1): LVM logical volume",
        "└─ md0_crypt (dm-0): dm-crypt LUKS2",
        "└─ md0: MD raid1",
        "├─ vda: disk",
        "└─ vdb: disk",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // The sysfs reader saw the real kernel's graph: holders up, slaves down.
    let topo = exitrd::topology::Topology::read(&root).unwrap();
    assert_eq!(topo.devices["md0"].holders, vec!["dm-0"]);
    assert_eq!(topo.devices["md0"].slaves, vec!["vda", "vdb"]);
    assert_eq!(topo.devices["dm-1"].display_name(), "vg0-root");
}

#[test]
fn multi_call_name_shutdown_refuses_when_not_pid1() {
    let dir = std::env::temp_dir().join(format!("exitrd-multicall-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("shutdown");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_exitrd"), &link).unwrap();
    let out = Command::new(&link).arg("poweroff").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only as PID 1"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn live_fixture_from_the_vm_takes_the_overlay_down_before_its_loop_and_medium() {
    let in_order = |steps: &[String], wanted: &[&str]| {
        let at: Vec<usize> = wanted.iter().map(|w| step_at(steps, w)).collect();
        assert!(
            at.windows(2).all(|w| w[0] < w[1]),
            "{wanted:#?} in {steps:#?}"
        );
        at
    };
    // The running live system (trixie VM, live-boot): / is an overlay of the squashfs on
    // loop0, whose file is on the boot medium.
    let running = steps_of("live");
    let at = in_order(
        &running,
        &[
            "unmount / (overlay on overlay)",
            "unmount /run/live/rootfs/filesystem.squashfs (squashfs on /dev/loop0)",
            "detach loop device loop0 from /run/live/medium/live/filesystem.squashfs",
            "unmount /run/live/medium (ext4 on /dev/vda)",
        ],
    );
    assert_eq!(at[3], running.len() - 1, "the medium goes last");
    // The same system right before the pivot (captured by a systemd-shutdown hook):
    // systemd has unmounted both layers' mounts (the overlay keeps its own references)
    // and moved the busy medium to /run/shutdown/mounts. loop0 has no user in sight, yet
    // the overlay reads from it: it must still go after the overlay.
    let prepivot = steps_of("live/prepivot");
    assert!(
        !prepivot.iter().any(|s| s.contains("/run/live/")),
        "{prepivot:#?}"
    );
    let at = in_order(
        &prepivot,
        &[
            "unmount / (overlay on overlay)",
            "detach loop device loop0 from /run/shutdown/mounts/8edf5c9fa4a29305/live/filesystem.squashfs",
            "unmount /run/shutdown/mounts/8edf5c9fa4a29305 (ext4 on /dev/vda)",
        ],
    );
    assert_eq!(at[2], prepivot.len() - 1, "the medium goes last");
}

#[test]
fn nbd_root_fixture_from_the_vm_unmounts_then_disconnects() {
    let steps = steps_of("nbd-root");
    let text = plan_text("nbd-root");
    let root = fixture("nbd-root");
    let at = |s: &str| step_at(&steps, s);
    // The network stays until the root is gone; then the device, last of all.
    let unmount_root = at("unmount / (ext4 on /dev/nbd0)");
    let disconnect = at("disconnect network block device nbd0");
    assert!(unmount_root < disconnect, "{steps:?}");
    assert_eq!(
        disconnect,
        steps.len() - 1,
        "disconnecting is the last step"
    );
    assert!(text.contains("└─ nbd0: network block device"), "{text}");
    // nbd1..nbd15 exist in sysfs, unconnected (size 0): nothing to close there.
    assert_eq!(
        steps.iter().filter(|s| s.starts_with("disconnect")).count(),
        1,
        "{steps:?}"
    );
    let topo = exitrd::topology::Topology::read(&root).unwrap();
    assert!(topo.devices["nbd0"].is_closable());
    assert!(!topo.devices["nbd1"].is_closable());
}

/// Captured in the VM scenario lvm-cache-thin: / on a thin volume whose pool's data LV has
/// a writeback dm-cache on md1, an MD RAID1 whose write-intent bitmap is a file on
/// /run/md-bitmap (read from the fixture's /proc/mdstat).
#[test]
fn lvm_cache_thin_fixture_stops_the_array_before_unmounting_its_bitmap() {
    let steps = steps_of("lvm-cache-thin");
    let root = fixture("lvm-cache-thin");
    // Device numbers vary between captures: match the steps by their start.
    let at = |s: &str| step_at(&steps, &format!("{s}…"));
    let unmount_root = at("unmount / (ext4 on /dev/mapper/vg0-root)");
    let thin = at("remove LVM volume vg0-root (");
    let tpool = at("remove LVM volume vg0-pool-tpool (");
    let tmeta = at("remove LVM volume vg0-pool_tmeta (");
    let cache = at("remove LVM volume vg0-pool_tdata (");
    let cdata = at("remove LVM volume vg0-cpool_cpool_cdata (");
    let cmeta = at("remove LVM volume vg0-cpool_cpool_cmeta (");
    let corig = at("remove LVM volume vg0-pool_tdata_corig (");
    let md = at("stop MD array md1 (raid1)");
    let bitmap = at("unmount /run/md-bitmap (ext4 on ");
    assert!(unmount_root < thin && thin < tpool && tpool < tmeta && tpool < cache);
    assert!(cache < cdata && cache < cmeta && cache < corig);
    assert!(cdata < md && cmeta < md && md < bitmap, "{steps:#?}");
    let topo = exitrd::topology::Topology::read(&root).unwrap();
    assert_eq!(topo.md_bitmap_files["md1"], "/run/md-bitmap/md1.bitmap");
}

#[test]
fn zfs_luks_fixture_from_the_vm_unmounts_the_dataset_before_closing_the_pool_device() {
    let steps = steps_of("zfs-luks");
    let root = fixture("zfs-luks");
    let at = |s: &str| step_at(&steps, s);
    // A ZFS dataset is not block-backed (anonymous device 0:N, source "pool/dataset"):
    // it is unmounted like any file system, before the root it is mounted on. The pool's
    // LUKS device has no holder in sysfs (ZFS does not register one), so it is a leaf
    // the exitrd closes after every unmount, once the zfs-export hook has run.
    let unmount_tank = at("unmount /srv/tank (zfs on tank/data)");
    let unmount_root = at("unmount / (ext4 on /dev/vda)");
    let close_luks = at("close dm-crypt mapping tank_crypt (dm-0) and free its key");
    assert!(
        unmount_tank < unmount_root && unmount_root < close_luks,
        "{steps:?}"
    );
    assert_eq!(
        close_luks,
        steps.len() - 1,
        "closing the LUKS device is last"
    );
    let topo = exitrd::topology::Topology::read(&root).unwrap();
    let tank = topo
        .mounts
        .iter()
        .find(|m| m.mount_point == "/srv/tank")
        .unwrap();
    assert_eq!(
        (tank.fstype.as_str(), tank.is_block_backed()),
        ("zfs", false)
    );
    assert!(topo.devices["dm-0"].holders.is_empty());
    // `exitrd status` knows the payload needs zpool for it.
    let out = Command::new(env!("CARGO_BIN_EXE_exitrd"))
        .args(["status", "--root", root.to_str().unwrap()])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("zpool (ZFS is mounted)"), "{status}");
}

/// The `storage` array of `exitrd plan --root tests/fixtures/NAME --json`.
fn storage_of(name: &str) -> Vec<serde_json::Value> {
    let root = fixture(name);
    let (code, json, _) = plan(&["--root", root.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{json}");
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    doc["storage"].as_array().unwrap().clone()
}

fn not_mounted(storage: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    storage
        .iter()
        .filter(|s| s["used_as"] == "not mounted")
        .collect()
}

#[test]
fn storage_tree_shows_zfs_pools_and_the_devices_no_mount_is_built_on() {
    // ZFS: the dataset's pool is its node; the pool's LUKS device (no holder in sysfs)
    // is shown as closed too, with the disk under it.
    let storage = storage_of("zfs-luks");
    let tank = storage
        .iter()
        .find(|s| s["used_as"] == "/srv/tank")
        .unwrap();
    assert_eq!(tank["fstype"], "zfs");
    assert_eq!(tank["tree"]["name"], "tank");
    assert!(tank["tree"]["what"].as_str().unwrap().contains("ZFS pool"));
    let others = not_mounted(&storage);
    assert_eq!(others.len(), 1, "{storage:#?}");
    assert_eq!(others[0]["tree"]["name"], "tank_crypt");
    assert_eq!(others[0]["tree"]["built_on"][0]["device"], "vdb");
    let text = plan_text("zfs-luks");
    assert!(text.contains("  not mounted (closed too)\n    └─ tank_crypt (dm-0): dm-crypt LUKS2\n       └─ vdb: disk\n"), "{text}");

    // Thin: the pool's own LV is closed too but under no mount; what it shares with the
    // root's tree is not drawn twice.
    let storage = storage_of("lvm-cache-thin");
    let others = not_mounted(&storage);
    assert_eq!(others.len(), 1, "{storage:#?}");
    assert_eq!(others[0]["tree"]["name"], "vg0-pool");
    let below = &others[0]["tree"]["built_on"];
    assert_eq!(below[0]["name"], "vg0-pool-tpool");
    assert!(below[0]["what"]
        .as_str()
        .unwrap()
        .ends_with("(shown above)"));
    assert!(below[0]["built_on"].as_array().unwrap().is_empty());

    // A stack fully under the root adds nothing.
    for name in ["lvm-luks-md", "live", "nbd-root"] {
        let storage = storage_of(name);
        assert!(not_mounted(&storage).is_empty(), "{name}: {storage:#?}");
    }
}

/// `exitrd status --json` always has `last_shutdown`; a tree without /boot or an ESP in
/// its fstab has no place for a record, and says so.
#[test]
fn status_json_always_has_the_last_shutdown() {
    let root = fixture("lvm-luks-md");
    let out = Command::new(env!("CARGO_BIN_EXE_exitrd"))
        .args(["status", "--json", "--root", root.to_str().unwrap()])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = &doc["last_shutdown"];
    assert_eq!(last["recorded"], false, "{last}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .starts_with("no place for a record"),
        "{last}"
    );
}
