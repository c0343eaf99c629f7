//! `exitrd status`: will the next shutdown really pivot into exitrd, and will its plan
//! cover the storage? Every check says what is wrong and the command that fixes it.
//!
//! systemd gives no sign at all when it skips the exitrd (a noexec `/run`, a missing or
//! broken `/run/initramfs/shutdown`), so this is the only place an admin learns it before
//! months of unclean shutdowns show up in SMART counters and resyncs.

use crate::config::Config;
use crate::plan::{self, PlanOptions};
use crate::record::{self, LastShutdown};
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
    /// The initramfs builder found on the system (`initramfs-tools`, `dracut`), if any.
    pub builder: Option<&'static str>,
    pub installed_version: String,
    pub payload_version: Option<String>,
    pub checks: Vec<Check>,
    /// What the record of the last shutdown says (always present; `recorded: false` with
    /// a reason when there is none).
    pub last_shutdown: LastShutdown,
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

/// The executable of the running process: its version is this build's.
const RUNNING: &str = "/proc/self/exe";

/// Whether two binaries are the same build: by their build IDs (one page of each), or,
/// when either has none, by their bytes.
fn same_build(a: &Path, b: &Path) -> bool {
    match (crate::buildid::of_file(a), crate::buildid::of_file(b)) {
        (Ok(Some(x)), Ok(Some(y))) => x == y,
        _ => same_content(a, b).unwrap_or(false),
    }
}

/// The version of a payload binary. When it is the same build as `running` (the exitrd
/// doing this check: the usual case, since the payload is a copy of the installed
/// binary), that is this build's version and nothing is started: exitrd.service runs this
/// at every boot, and starting a 2 MiB static binary is most of its cost under emulation.
/// Otherwise the binary is run and asked (`exitrd X.Y.Z` from `--version`).
fn payload_version(binary: &Path, running: &Path) -> Option<String> {
    if same_build(binary, running) {
        return Some(env!("CARGO_PKG_VERSION").to_string());
    }
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(str::to_string)
}

/// Whether two files hold the same bytes (sizes first, then the contents chunk by chunk,
/// stopping at the first difference).
fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    const CHUNK: usize = 64 * 1024;
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let len = fa.metadata()?.len();
    if fb.metadata()?.len() != len {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        fa.read_exact(&mut ba[..n])?;
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        left -= n as u64;
    }
    Ok(true)
}

/// Tools the storage needs at shutdown beyond exitrd itself, and where the payload must
/// hold them: ZFS pools are exported with `zpool`. (NBD disks and iSCSI sessions need
/// none: exitrd disconnects NBD devices itself, with the two ioctls `nbd-client -d` would
/// use, and logs out of iSCSI sessions itself, with the kernel's iSCSI netlink requests
/// iscsid would send; neither iscsiadm nor iscsid is wanted in the payload.)
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

/// An initramfs builder exitrd works with: the files that show it builds the images (its
/// package proper, not only the tools: initramfs-tools-core's mkinitramfs and
/// dracut-core's dracut stay when an admin switches builders), and exitrd's file that
/// adds the payload to its images.
struct Builder {
    name: &'static str,
    installed: &'static [&'static str],
    integration: &'static str,
    what: &'static str,
}

const BUILDERS: [Builder; 2] = [
    Builder {
        name: "initramfs-tools",
        installed: &["usr/sbin/update-initramfs"],
        integration: "usr/share/initramfs-tools/hooks/exitrd",
        what: "exitrd's hook",
    },
    Builder {
        name: "dracut",
        // The kernel's hook is a conffile that outlives a removal; the program does not.
        installed: &["usr/bin/dracut", "etc/kernel/postinst.d/dracut"],
        integration: "usr/lib/dracut/modules.d/90exitrd/module-setup.sh",
        what: "exitrd's dracut module",
    },
];

/// The dracut configuration files, in the order dracut reads them (later wins).
fn dracut_conf_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("etc/dracut.conf")];
    for dir in ["usr/lib/dracut/dracut.conf.d", "etc/dracut.conf.d"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        found.retain(|p| p.extension().is_some_and(|x| x == "conf"));
        found.sort();
        files.extend(found);
    }
    files
}

/// The dracut configuration file that omits the exitrd module, if one does.
fn dracut_omits_exitrd(root: &Path) -> Option<PathBuf> {
    dracut_conf_files(root).into_iter().find(|f| {
        std::fs::read_to_string(f).is_ok_and(|text| {
            text.lines()
                .map(str::trim_start)
                .filter(|l| l.starts_with("omit_dracutmodules"))
                .any(|l| {
                    l.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'))
                        .any(|w| w == "exitrd")
                })
        })
    })
}

/// Which builder makes the images, and whether they will carry the payload. The payload
/// in /run/initramfs is checked apart; this says what the next boots will bring.
fn builder_check(root: &Path) -> (Option<&'static str>, Check) {
    let found: Vec<&Builder> = BUILDERS
        .iter()
        .filter(|b| b.installed.iter().all(|f| root.join(f).exists()))
        .collect();
    let Some(first) = found.first() else {
        return (
            None,
            Check {
                name: "builder",
                ok: false,
                detail: "no initramfs builder found (neither initramfs-tools nor dracut): no image will carry the payload"
                    .into(),
                fix: Some("apt install initramfs-tools   # or: apt install dracut".into()),
            },
        );
    };
    let names: Vec<&str> = found.iter().map(|b| b.name).collect();
    if let Some(b) = found.iter().find(|b| !root.join(b.integration).exists()) {
        return (
            Some(first.name),
            Check {
                name: "builder",
                ok: false,
                detail: format!(
                    "{} builds the initramfs, but {} is missing (/{}): its images carry no payload",
                    b.name, b.what, b.integration
                ),
                fix: Some(format!(
                    "apt install --reinstall exitrd   # then: {}",
                    rebuild_command(b.name)
                )),
            },
        );
    }
    let mut detail = format!(
        "{} builds the initramfs; {} adds the payload to its images",
        names.join(" and "),
        found
            .iter()
            .map(|b| b.what)
            .collect::<Vec<_>>()
            .join(" and ")
    );
    if names.contains(&"dracut") {
        match dracut_omits_exitrd(root) {
            Some(conf) => {
                detail = format!(
                    "dracut builds the initramfs, but {} omits the exitrd module: its images carry no payload, exitrd.service puts it in place after each boot",
                    conf.strip_prefix(root).map_or(conf.clone(), |p| Path::new("/").join(p)).display()
                )
            }
            None => detail.push_str("; dracut's own shutdown (dracut-shutdown.service) stands aside"),
        }
    }
    (
        Some(first.name),
        Check {
            name: "builder",
            ok: true,
            detail,
            fix: None,
        },
    )
}

fn rebuild_command(builder: &str) -> &'static str {
    match builder {
        "dracut" => "dracut -f",
        _ => "update-initramfs -u",
    }
}

/// The package's drop-in that makes dracut's own shutdown unit stand aside.
const DRACUT_DROP_IN: &str = "usr/lib/systemd/system/dracut-shutdown.service.d/exitrd.conf";

/// When the check runs, which decides how dracut's restore unit is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// A captured tree: nothing is run, the unit files say what systemd would do.
    Fixture,
    /// exitrd.service at boot, ordered before dracut-shutdown.service: that unit has not
    /// started yet, and will stand aside if the package's drop-in is there.
    Boot,
    /// An admin's `exitrd status`: systemd is asked whether the unit is active.
    Later,
}

/// Whether systemd has `unit` active (its stop action will run at shutdown).
fn unit_is_active(unit: &str) -> bool {
    Command::new("systemctl")
        .args(["is-active", "--quiet", unit])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs every check against the system below `root` (`/` on a live machine). Binaries
/// of a fixture tree (`When::Fixture`) are never executed.
/// What the pivot itself needs, and what the checks of it found.
struct Pivot {
    checks: Vec<Check>,
    /// `/run/initramfs/shutdown` is an executable file.
    executable: bool,
    /// The payload's version, when it was looked at and is exitrd.
    version: Option<String>,
}

/// Checks 1 and 2: what the next shutdown's pivot needs, and nothing else (no sysfs, no
/// storage, no builder): a dedicated exec mount on `/run/initramfs` and the installed
/// build of exitrd in it. `mounts`: the mount table below `root`.
fn pivot_checks(root: &Path, mounts: &[Mount], when: When) -> Pivot {
    let payload_runnable = when != When::Fixture;
    let dir = exitrd_dir(root);
    let shutdown = dir.join("shutdown");
    let mut checks = Vec::new();
    const PREPARE: &str = "systemctl restart exitrd.service   # or: exitrd prepare \
                           (last resort: exitrd prepare --from /boot/initrd.img-$(uname -r))";

    // 1. A dedicated mount without noexec; otherwise access(X_OK) fails and systemd
    //    silently skips the exitrd.
    let own = mount_at(mounts, "/run/initramfs");
    let run = mount_at(mounts, "/run");
    // A noexec mount holding this build's payload is one exitrd.service's conditions do
    // not see (it runs only when the mount or the payload is missing), so restarting the
    // unit would change nothing there: prepare mounts a new tmpfs.
    let noexec = own.is_some_and(|m| has_option(m, "noexec"));
    let (ok, detail) = match own {
        Some(_) if noexec => (false, "/run/initramfs is mounted noexec".to_string()),
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
        fix: (!ok).then(|| if noexec { "exitrd prepare" } else { PREPARE }.to_string()),
    });

    // 2. shutdown is there, executable, and is exitrd of the installed version.
    let installed = env!("CARGO_PKG_VERSION").to_string();
    let executable = std::fs::metadata(&shutdown)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    let version = if executable && payload_runnable {
        payload_version(&shutdown.with_file_name("exitrd"), Path::new(RUNNING))
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

    Pivot {
        checks,
        executable,
        version,
    }
}

/// Only what the next shutdown's pivot needs (checks 1 and 2 of [`check`]), from the mount
/// table alone: what exitrd.service checks, and repairs, at boot before anything else
/// (the rest is exitrd-report.service's, which nothing waits for).
pub fn check_pivot(root: &Path, when: When) -> std::io::Result<Vec<Check>> {
    let path = root.join("proc/self/mountinfo");
    let table = std::fs::read(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let (mounts, _) = crate::topology::mountinfo::parse_lenient(&table);
    Ok(pivot_checks(root, &mounts, when).checks)
}

pub fn check(root: &Path, when: When) -> std::io::Result<Status> {
    let topo = Topology::read(root)?;
    let dir = exitrd_dir(root);
    let installed = env!("CARGO_PKG_VERSION").to_string();
    let Pivot {
        mut checks,
        executable,
        version,
    } = pivot_checks(root, &topo.mounts, when);

    // 2b. On dracut systems: dracut's request to unpack its image into /run/initramfs at
    //     shutdown, which would write over the payload. exitrd prepare drops it, but
    //     dracut's hooks may set it again after exitrd's pre-pivot hook (mdraid's
    //     cleanup hook does). It matters only if dracut-shutdown.service is active: the
    //     package's drop-in makes the unit stand aside when the payload was in place at
    //     its start (exitrd.service comes before it). At boot, the unit has not started
    //     yet: asking systemctl then would always say inactive, and starting it cost
    //     more than the whole check under emulation.
    let flag = dir.join(crate::payload::DRACUT_RESTORE_FLAG);
    let restore_will_run = || match when {
        When::Later => unit_is_active("dracut-shutdown.service"),
        When::Boot | When::Fixture => !root.join(DRACUT_DROP_IN).exists(),
    };
    if executable && flag.exists() && restore_will_run() {
        checks.push(Check {
            name: "dracut-restore",
            ok: false,
            detail: format!(
                "{} is set and dracut-shutdown.service is active: it will unpack dracut's image over the payload at shutdown",
                flag.display()
            ),
            fix: Some(format!("rm {}", flag.display())),
        });
    }

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

    // 4b. A root on the network (NFS, iSCSI, NBD): its interface must stay configured
    //     until the pivot, whatever configured it.
    if let Some((ok, detail, fix)) = crate::netroot::check(root, &topo) {
        checks.push(Check {
            name: "network",
            ok,
            detail,
            fix,
        });
    }

    // 5. The builder of the next images, and whether they will carry the payload.
    let (builder, builder_check) = builder_check(root);
    checks.push(builder_check);

    let mut last_shutdown = record::last_shutdown(root, &topo.devices);
    if !config(root).record {
        let why = "no record of the last shutdown: turned off (RECORD=no in /etc/exitrd.conf)";
        last_shutdown.recorded = false;
        last_shutdown.clean = None;
        last_shutdown.record = None;
        last_shutdown.summary = why.into();
        last_shutdown.reason = Some(why.into());
    }

    Ok(Status {
        ready: checks.iter().all(|c| c.ok),
        last_shutdown,
        builder,
        installed_version: installed,
        payload_version: version,
        checks,
    })
}

/// The settings in `root/etc/exitrd.conf` (its problems are the shutdown's to report).
pub fn config(root: &Path) -> Config {
    let mut cfg = Config::default();
    if let Ok(bytes) = std::fs::read(root.join("etc/exitrd.conf")) {
        let _ = cfg.apply_file(&String::from_utf8_lossy(&bytes));
    }
    cfg
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
    println!("{}", s.last_shutdown.summary);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn root(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let r = std::env::temp_dir().join(format!("exitrd-status-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&r);
        for (path, text) in files {
            let p = r.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        fs::create_dir_all(&r).unwrap();
        r
    }

    #[test]
    fn names_the_builder_and_whether_its_images_carry_the_payload() {
        let r = root(
            "itools",
            &[
                ("usr/sbin/update-initramfs", ""),
                ("usr/sbin/mkinitramfs", ""),
                ("usr/share/initramfs-tools/hooks/exitrd", ""),
                // dracut-core's program without dracut's kernel hook: not the builder
                ("usr/bin/dracut", ""),
            ],
        );
        let (b, c) = builder_check(&r);
        assert_eq!(b, Some("initramfs-tools"));
        assert!(c.ok, "{}", c.detail);
        assert!(
            c.detail.starts_with("initramfs-tools builds"),
            "{}",
            c.detail
        );

        // After a switch: initramfs-tools-core's mkinitramfs and a kept conffile stay.
        let kernel_hook = ("etc/kernel/postinst.d/dracut", "");
        let r = root(
            "dracut",
            &[
                ("usr/bin/dracut", ""),
                kernel_hook,
                ("usr/sbin/mkinitramfs", ""),
                ("etc/kernel/postinst.d/initramfs-tools", ""),
            ],
        );
        let (b, c) = builder_check(&r);
        assert_eq!(b, Some("dracut"));
        assert!(!c.ok);
        assert!(
            c.detail.contains("exitrd's dracut module is missing"),
            "{}",
            c.detail
        );
        assert!(c.fix.unwrap().contains("dracut -f"));

        let module = "usr/lib/dracut/modules.d/90exitrd/module-setup.sh";
        let r = root(
            "dracut-ok",
            &[("usr/bin/dracut", ""), kernel_hook, (module, "")],
        );
        let (_, c) = builder_check(&r);
        assert!(c.ok, "{}", c.detail);
        assert!(
            c.detail.contains("dracut-shutdown.service) stands aside"),
            "{}",
            c.detail
        );

        let r = root(
            "dracut-omit",
            &[
                ("usr/bin/dracut", ""),
                kernel_hook,
                (module, ""),
                ("etc/dracut.conf.d/10-x.conf", "hostonly=yes\n"),
                (
                    "etc/dracut.conf.d/90-no-exitrd.conf",
                    "omit_dracutmodules+=\" exitrd \"\n",
                ),
            ],
        );
        let (_, c) = builder_check(&r);
        assert!(c.ok);
        assert!(
            c.detail.contains(
                "/etc/dracut.conf.d/90-no-exitrd.conf omits the exitrd module: its images \
                 carry no payload"
            ),
            "{}",
            c.detail
        );

        let r = root("none", &[]);
        let (b, c) = builder_check(&r);
        assert_eq!(b, None);
        assert!(!c.ok);
        assert!(
            c.detail
                .ends_with("dracut): no image will carry the payload"),
            "{}",
            c.detail
        );
        assert!(c.fix.unwrap().starts_with("apt install"));
    }

    #[test]
    fn dracuts_restore_flag_counts_only_without_the_drop_in() {
        let payload = [
            ("run/initramfs/shutdown", "#!/bin/sh\n"),
            ("run/initramfs/.need_shutdown", ""),
            ("proc/self/mountinfo", ""),
        ];
        let flagged = |r: &Path| {
            let mut perms = fs::metadata(r.join("run/initramfs/shutdown"))
                .unwrap()
                .permissions();
            perms.set_mode(0o755);
            fs::set_permissions(r.join("run/initramfs/shutdown"), perms).unwrap();
            check(r, When::Fixture)
                .unwrap()
                .checks
                .iter()
                .any(|c| c.name == "dracut-restore" && !c.ok)
        };
        let r = root("flag-bare", &payload);
        assert!(flagged(&r), "no drop-in: the flag must be reported");
        let mut with_drop_in = payload.to_vec();
        with_drop_in.push((DRACUT_DROP_IN, "[Unit]\n"));
        let r = root("flag-drop-in", &with_drop_in);
        assert!(!flagged(&r), "the drop-in makes the unit stand aside");
    }

    #[test]
    fn same_content_compares_every_byte() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut last = big.clone();
        *last.last_mut().unwrap() ^= 1;
        let r = root("same-content", &[]);
        for (name, bytes) in [
            ("a", &big),
            ("b", &big),
            ("c", &last),
            ("d", &big[..1000].to_vec()),
        ] {
            fs::write(r.join(name), bytes).unwrap();
        }
        assert!(same_content(&r.join("a"), &r.join("b")).unwrap());
        // Same size, one bit off in the last chunk.
        assert!(!same_content(&r.join("a"), &r.join("c")).unwrap());
        assert!(!same_content(&r.join("a"), &r.join("d")).unwrap());
        assert!(same_content(&r.join("a"), &r.join("missing")).is_err());
    }

    /// exitrd.service's part at boot: the pivot's two checks from the mount table alone
    /// (this tree has no sysfs, no builder and no storage to read), the same verdicts as
    /// the whole check's first two.
    #[test]
    fn the_pivot_check_reads_the_mount_table_and_the_payload_only() {
        let exec = "1 0 0:20 / / rw - ext4 /dev/vda rw\n\
                    2 1 0:21 / /run rw,nosuid,nodev,noexec - tmpfs tmpfs rw\n\
                    3 2 0:22 / /run/initramfs rw,nosuid,nodev - tmpfs exitrd rw\n";
        let r = root(
            "pivot-only",
            &[
                ("proc/self/mountinfo", exec),
                ("run/initramfs/shutdown", ""),
            ],
        );
        fs::set_permissions(
            r.join("run/initramfs/shutdown"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let checks = check_pivot(&r, When::Fixture).unwrap();
        let names: Vec<&str> = checks.iter().map(|c| c.name).collect();
        assert_eq!(names, ["exec-mount", "payload"]);
        assert!(checks.iter().all(|c| c.ok), "{checks:?}");
        let whole = check(&r, When::Fixture).unwrap();
        assert_eq!(
            whole.checks[..2]
                .iter()
                .map(|c| (c.name, c.ok))
                .collect::<Vec<_>>(),
            [("exec-mount", true), ("payload", true)]
        );
        // /run/initramfs a plain directory of a noexec /run: systemd would skip it.
        let noexec = "1 0 0:20 / / rw - ext4 /dev/vda rw\n\
                      2 1 0:21 / /run rw,nosuid,nodev,noexec - tmpfs tmpfs rw\n";
        fs::write(r.join("proc/self/mountinfo"), noexec).unwrap();
        let checks = check_pivot(&r, When::Fixture).unwrap();
        assert!(
            !checks[0].ok && checks[0].detail.contains("noexec"),
            "{checks:?}"
        );
        assert!(checks[0].fix.as_deref().unwrap().contains("exitrd.service"));
        // Its own mount, but noexec: exitrd.service would not run again for it (its
        // conditions see a mount holding this build's payload), so the fix is prepare's.
        let own_noexec = format!("{exec}4 2 0:23 / /run/initramfs rw,noexec - tmpfs exitrd rw\n");
        fs::write(r.join("proc/self/mountinfo"), own_noexec).unwrap();
        let checks = check_pivot(&r, When::Fixture).unwrap();
        assert_eq!(
            (
                checks[0].ok,
                checks[0].detail.as_str(),
                checks[0].fix.as_deref()
            ),
            (
                false,
                "/run/initramfs is mounted noexec",
                Some("exitrd prepare")
            )
        );
    }

    #[test]
    fn a_payload_identical_to_the_running_exitrd_is_not_started() {
        // Not executable, not even a program: a copy of the "running" binary is known
        // to be this build without starting it.
        let r = root(
            "payload-version",
            &[("payload/exitrd", "same bytes"), ("running", "same bytes")],
        );
        assert_eq!(
            payload_version(&r.join("payload/exitrd"), &r.join("running")).as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        // Anything else is asked for its version; what cannot run has none.
        fs::write(r.join("running"), "other bytes").unwrap();
        assert_eq!(
            payload_version(&r.join("payload/exitrd"), &r.join("running")),
            None
        );
        let script = r.join("payload/older");
        fs::write(&script, "#!/bin/sh\necho \"exitrd 0.0.9\"\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        // A file just written can be briefly "busy" to exec while another test thread
        // forks (the child holds the write descriptor until its own exec): retry.
        let mut v = None;
        for _ in 0..20 {
            v = payload_version(&script, &r.join("running"));
            if v.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(v.as_deref(), Some("0.0.9"));
    }

    #[test]
    fn binaries_are_the_same_build_by_their_build_ids() {
        let r = root("same-build", &[]);
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // The last byte changed: the bytes differ, the build ID (in the first page) does
        // not, so the two count as one build, known without reading either to its end.
        let mut tail = me.clone();
        *tail.last_mut().unwrap() ^= 1;
        // The build ID's last byte changed: another build, though the sizes match.
        let id = crate::buildid::of_file(&std::env::current_exe().unwrap())
            .unwrap()
            .unwrap();
        let raw: Vec<u8> = (0..id.len() / 2)
            .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let at = me.windows(raw.len()).position(|w| w == raw).unwrap();
        let mut other = me.clone();
        other[at + raw.len() - 1] ^= 1;
        for (name, bytes) in [("a", &me), ("b", &tail), ("c", &other)] {
            fs::write(r.join(name), bytes).unwrap();
        }
        assert!(same_build(&r.join("a"), &r.join("b")));
        assert!(!same_content(&r.join("a"), &r.join("b")).unwrap());
        assert!(!same_build(&r.join("a"), &r.join("c")));
    }

    #[test]
    fn an_omitted_module_is_read_as_a_word_not_a_substring() {
        let r = root(
            "omit-other",
            &[(
                "etc/dracut.conf",
                "omit_dracutmodules+=\" exitrd-extra plymouth \"\n",
            )],
        );
        assert_eq!(dracut_omits_exitrd(&r), None);
    }
}
