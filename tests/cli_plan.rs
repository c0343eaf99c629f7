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
    let root = fixture("lvm-luks-md");
    let (code, text, _) = plan(&["--root", root.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let steps: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().split_once(". ").map(|(_, s)| s))
        .collect();
    let at = |s: &str| {
        steps
            .iter()
            .position(|x| *x == s)
            .unwrap_or_else(|| panic!("no step {s:?} in {steps:?}"))
    };
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
