//! `exitrd status`: will the next shutdown really pivot into exitrd, and will its plan
//! cover the storage? Every check says what is wrong and the command that fixes it.
//!
//! systemd gives no sign at all when it skips the exitrd (a noexec `/run`, a missing or
//! broken `/run/initramfs/shutdown`), so this is the only place an admin learns it before
//! months of unclean shutdowns show up in SMART counters and resyncs.

use crate::plan::{self, PlanOptions};
use crate::topology::mountinfo::Mount;
use crate::topology::Topology;
use serde::Serialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// The command that repairs it, when there is one.
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub ready: bool,
    pub installed_version: String,
    pub payload_version: Option<String>,
    pub checks: Vec<Check>,
}

/// Where systemd-shutdown looks, below `root`.
fn exitrd_dir(root: &Path) -> PathBuf {
    root.join("run/initramfs")
}

fn mount_at<'a>(mounts: &'a [Mount], path: &str) -> Option<&'a Mount> {
    // The last mount on a path is the visible one.
    mounts.iter().rev().find(|m| m.mount_point == path)
}

fn has_option(m: &Mount, opt: &str) -> bool {
    m.options.split(',').any(|o| o == opt)
}

/// The version a payload binary reports (`exitrd X.Y.Z` from `--version`).
fn payload_version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(str::to_string)
}

/// Tools the storage needs at shutdown beyond exitrd itself, and where the payload must
/// hold them: ZFS pools are exported with `zpool`. (NBD disks need none: exitrd
/// disconnects them itself, with the two ioctls `nbd-client -d` would use.)
fn needed_tools(topo: &Topology) -> Vec<(&'static str, &'static str)> {
    let mut tools = Vec::new();
    if topo.mounts.iter().any(|m| m.fstype == "zfs") {
        tools.push(("zpool", "ZFS is mounted"));
    }
    tools
}

fn payload_has_tool(dir: &Path, tool: &str) -> bool {
    ["usr/sbin", "sbin", "usr/bin", "bin"]
        .iter()
        .any(|d| dir.join(d).join(tool).is_file())
}

/// Runs every check against the system below `root` (`/` on a live machine).
/// `payload_runnable` is false for fixture trees, whose binaries must not be executed.
pub fn check(root: &Path, payload_runnable: bool) -> std::io::Result<Status> {
    let topo = Topology::read(root)?;
    let dir = exitrd_dir(root);
    let shutdown = dir.join("shutdown");
    let mut checks = Vec::new();
    const PREPARE: &str = "systemctl restart exitrd.service   # or: exitrd prepare \
                           (last resort: exitrd prepare --from /boot/initrd.img-$(uname -r))";

    // 1. A dedicated mount without noexec; otherwise access(X_OK) fails and systemd
    //    silently skips the exitrd.
    let own = mount_at(&topo.mounts, "/run/initramfs");
    let run = mount_at(&topo.mounts, "/run");
    let (ok, detail) = match own {
        Some(m) if has_option(m, "noexec") => (false, "/run/initramfs is mounted noexec".to_string()),
        Some(m) => (true, format!("/run/initramfs is its own {} mount, executable", m.fstype)),
        None if run.is_some_and(|r| has_option(r, "noexec")) => (
            false,
            "/run/initramfs is a plain directory of /run, which is mounted noexec: systemd will skip the exitrd".to_string(),
        ),
        None => (false, "/run/initramfs is not a mount of its own".to_string()),
    };
    checks.push(Check {
        name: "exec-mount",
        ok,
        detail,
        fix: (!ok).then(|| PREPARE.to_string()),
    });

    // 2. shutdown is there, executable, and is exitrd of the installed version.
    let installed = env!("CARGO_PKG_VERSION").to_string();
    let executable = std::fs::metadata(&shutdown)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    let version = if executable && payload_runnable {
        payload_version(&shutdown.with_file_name("exitrd"))
    } else {
        None
    };
    let (ok, detail) = if !executable {
        (
            false,
            format!("{} is missing or not executable", shutdown.display()),
        )
    } else if !payload_runnable {
        (
            true,
            format!("{} is executable (version not checked)", shutdown.display()),
        )
    } else {
        match &version {
            Some(v) if *v == installed => (true, format!("{} is exitrd {v}", shutdown.display())),
            Some(v) => (
                false,
                format!(
                    "{} is exitrd {v}, but {installed} is installed",
                    shutdown.display()
                ),
            ),
            None => (false, format!("{} is not exitrd", shutdown.display())),
        }
    };
    checks.push(Check {
        name: "payload",
        ok,
        detail,
        fix: (!ok).then(|| PREPARE.to_string()),
    });

    // 3. Tools the storage needs are in the payload.
    let missing: Vec<String> = needed_tools(&topo)
        .into_iter()
        .filter(|(tool, _)| !payload_has_tool(&dir, tool))
        .map(|(tool, why)| format!("{tool} ({why})"))
        .collect();
    checks.push(Check {
        name: "tools",
        ok: missing.is_empty(),
        detail: if missing.is_empty() {
            "the payload holds every tool the storage needs".into()
        } else {
            format!("the payload lacks {}", missing.join(", "))
        },
        fix: (!missing.is_empty())
            .then(|| "install the package that provides the exitrd hook for it, then: update-initramfs -u && exitrd prepare".into()),
    });

    // 4. Every mounted block device is known to the planner.
    let opts = PlanOptions::live();
    let p = plan::plan(&topo, &opts);
    let unknown: Vec<String> = plan::mounts_in_scope(&topo, &opts)
        .into_iter()
        .map(|i| &topo.mounts[i])
        .filter(|m| m.is_block_backed() && topo.device_by_number(m.major, m.minor).is_none())
        .map(|m| format!("{} ({}:{})", m.mount_point, m.major, m.minor))
        .collect();
    let mut problems: Vec<String> = unknown
        .iter()
        .map(|u| format!("{u} is on a device missing from sysfs"))
        .collect();
    problems.extend(p.warnings.iter().cloned());
    checks.push(Check {
        name: "plan",
        ok: problems.is_empty(),
        detail: if problems.is_empty() {
            format!(
                "the plan covers every mount and device ({} steps, see 'exitrd plan')",
                p.steps.len()
            )
        } else {
            problems.join("; ")
        },
        fix: None,
    });

    Ok(Status {
        ready: checks.iter().all(|c| c.ok),
        installed_version: installed,
        payload_version: version,
        checks,
    })
}

pub fn print_human(s: &Status) {
    if s.ready {
        println!("exitrd status: ready: the next shutdown will pivot into exitrd and take the storage apart");
    } else {
        println!("exitrd status: NOT READY: the next shutdown will leave the storage stack open");
    }
    for c in &s.checks {
        println!("  [{}] {}", if c.ok { "ok" } else { "!!" }, c.detail);
        if let Some(fix) = &c.fix {
            println!("       fix: {fix}");
        }
    }
}
