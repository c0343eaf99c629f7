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
