//! Commands for the running system: `plan`, `prepare`, and `shutdown` (the PID-1 mode).

use crate::plan::{self, DeviceTree, PlanOptions};
use crate::topology::Topology;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "exitrd",
    version,
    about = "Shutdown initramfs for initramfs-tools: takes the root storage stack apart at shutdown",
    long_about = "exitrd is run by systemd-shutdown as /run/initramfs/shutdown after it pivots out of \
the root file system. It unmounts the old root and closes the devices beneath it (LVM, \
dm-crypt, MD RAID, loop) in dependency order, then reboots or powers off.\n\n\
On the running system, 'exitrd plan' shows what that teardown will do."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the storage beneath every mounted file system and the teardown steps, in order.
    ///
    /// Reads proc/self/mountinfo, proc/swaps and sys/class/block below --root; needs no
    /// privileges and changes nothing.
    Plan {
        /// Read the system below this directory instead of / (a captured fixture tree).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Plan as the exitrd does at shutdown: everything below /oldroot, including API
        /// file systems (for trees captured inside the exitrd).
        #[arg(long)]
        exitrd_view: bool,
    },
    /// Mount a dedicated exec tmpfs on /run/initramfs and copy the payload into it.
    ///
    /// Run at boot by the initramfs-tools init-bottom script with --payload; without it,
    /// the payload is built from the installed files the same way update-initramfs does
    /// (the repair path of exitrd.service, and the refresh after a package upgrade).
    /// With --from, the payload is read out of an initramfs image instead: the last
    /// resort when the installed files are gone or broken.
    /// Files already in the target are kept; an earlier exitrd tmpfs there is replaced
    /// in one step.
    Prepare {
        /// Directory holding the payload (at least an executable 'shutdown').
        #[arg(long, value_name = "DIR", conflicts_with = "from")]
        payload: Option<PathBuf>,
        /// Take the payload (the exitrd/ directory) out of this initramfs-tools image,
        /// e.g. /boot/initrd.img-$(uname -r); gzip, zstd, xz or lz4, after any
        /// uncompressed early parts. Bounded: 2 GiB read and unpacked in all, 1048576
        /// entries, 512 MiB of payload, and 1 MiB left free where it is unpacked.
        #[arg(long, value_name = "IMAGE")]
        from: Option<PathBuf>,
        /// Where systemd looks for the exitrd.
        #[arg(long, value_name = "DIR", default_value = "/run/initramfs")]
        target: PathBuf,
    },
    /// Say whether the next shutdown will pivot into exitrd and whether its plan covers
    /// the storage; for each problem, the command that fixes it.
    ///
    /// Exit status: 0 ready, 1 not ready, 2 error.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Repair what can be repaired (rebuild /run/initramfs from the installed files),
        /// then check again. exitrd.service runs it at boot with --pivot-only.
        #[arg(long)]
        repair: bool,
        /// Check only what the next shutdown's pivot needs: the exec tmpfs on
        /// /run/initramfs and the installed build of exitrd in it (no storage, builder or
        /// network checks, no sysfs). What exitrd.service does at boot, with --repair,
        /// before dracut-shutdown.service looks at /run/initramfs.
        #[arg(long, conflicts_with_all = ["json", "boot_report"])]
        pivot_only: bool,
        /// At boot, after exitrd.service (exitrd-report.service, which nothing waits
        /// for): the whole check, a warning on stderr when the next shutdown will not take
        /// the stack apart, the record of the last shutdown into the journal and the
        /// node_exporter textfile. Repairs nothing.
        #[arg(long, conflicts_with = "repair")]
        boot_report: bool,
        /// Check the system below this directory (a captured tree; binaries there are
        /// not run).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
    /// Check hooks before they go into an image; refuse any that somebody but root could
    /// have changed.
    ///
    /// A hook runs as root at every shutdown. It is refused (one line on stderr saying
    /// what to run, exit status 1) if it, a directory on its way or the target of a
    /// symbolic link to it is not owned by root or is writable by group or others. The
    /// initramfs-tools hook runs this for every hook in /etc/exitrd/hooks and
    /// /usr/share/exitrd/hooks and leaves the refused ones out of the image.
    CheckHook {
        /// Check the files below this directory instead of / (a fixture tree).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Absolute paths of the hooks, as seen below --root.
        #[arg(required = true, value_name = "HOOK")]
        hooks: Vec<PathBuf>,
    },
    /// Run the shutdown as PID 1 (what /run/initramfs/shutdown does). Refuses otherwise.
    Shutdown {
        /// reboot, poweroff, halt, kexec or exit, then systemd's options.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "VERB [OPTIONS]"
        )]
        args: Vec<String>,
    },
}

fn print_tree(t: &DeviceTree, prefix: &str, last: bool, top: bool) {
    let (branch, cont) = match (top, last) {
        (true, _) => ("", ""),
        (false, true) => ("└─ ", "   "),
        (false, false) => ("├─ ", "│  "),
    };
    let label = if t.name == t.device {
        t.device.clone()
    } else {
        format!("{} ({})", t.name, t.device)
    };
    println!("{prefix}{branch}{label}: {}", t.what);
    let child_prefix = format!("{prefix}{cont}");
    for (i, c) in t.built_on.iter().enumerate() {
        print_tree(c, &child_prefix, i + 1 == t.built_on.len(), false);
    }
}

pub fn plan_command(root: &PathBuf, json: bool, exitrd_view: bool) -> i32 {
    let topo = match Topology::read(root) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "exitrd: cannot read the system below {}: {e}",
                root.display()
            );
            return 2;
        }
    };
    let opts = if exitrd_view {
        PlanOptions::shutdown()
    } else {
        PlanOptions::live()
    };
    let p = plan::plan(&topo, &opts);
    let storage = plan::storage_roots(&topo, &opts, &p);
    if json {
        let doc = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "root": root,
            "scope": p.scope,
            "storage": storage,
            "steps": p.steps,
            "warnings": topo.warnings.iter().chain(p.warnings.iter()).collect::<Vec<_>>(),
        });
        match serde_json::to_string_pretty(&doc) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("exitrd: {e}");
                return 2;
            }
        }
        return 0;
    }
    println!("Storage:");
    if storage.is_empty() {
        println!("  (no mounted block devices)");
    }
    for s in &storage {
        if s.used_as == plan::NOT_MOUNTED {
            println!("  {} (closed too)", s.used_as);
        } else {
            println!("  {} ({})", s.used_as, s.fstype);
        }
        print_tree(&s.tree, "    ", true, false);
    }
    println!();
    if exitrd_view {
        println!("Teardown steps:");
    } else {
        println!("Teardown steps at shutdown (these paths are then below /oldroot):");
    }
    for (i, step) in p.steps.iter().enumerate() {
        println!("  {:>2}. {}", i + 1, step.describe());
    }
    if p.steps.is_empty() {
        println!("  (nothing to take down)");
    }
    for w in topo.warnings.iter().chain(p.warnings.iter()) {
        println!("warning: {w}");
    }
    0
}

/// Whether `journal_stream` (systemd's `$JOURNAL_STREAM`, "DEVICE:INODE" in decimal) names
/// the file with `dev` and `ino`.
fn is_journal_stream(journal_stream: Option<&str>, dev: u64, ino: u64) -> bool {
    journal_stream
        .and_then(|v| v.split_once(':'))
        .is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

/// The journal's warning priority, `<4>`, for a line on stderr when stderr is the journal
/// (a unit's output: systemd sets `$JOURNAL_STREAM` to its device and inode); nothing on
/// an admin's terminal, where the prefix would be printed as it is.
fn warning_prefix() -> &'static str {
    use std::os::unix::fs::MetadataExt;
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return "";
    };
    let env = std::env::var("JOURNAL_STREAM").ok();
    if is_journal_stream(env.as_deref(), stderr.dev(), stderr.ino()) {
        "<4>"
    } else {
        ""
    }
}

/// `--repair`: rebuilds /run/initramfs from the installed files, saying how it went.
fn repair_run_initramfs() {
    match crate::payload::prepare_installed(
        Path::new(crate::payload::PAYLOAD_BUILDER),
        Path::new("/run/initramfs"),
    ) {
        Ok(summary) => eprintln!("exitrd: repaired: {summary}"),
        Err(e) => eprintln!("exitrd: repair failed: {e}"),
    }
}

/// `exitrd status --pivot-only [--repair]`: exitrd.service at boot. Only what the pivot
/// needs, from the mount table and two ELF notes: the whole check, which reads sysfs and
/// the builder's files, is exitrd-report.service's job, off the boot's critical path.
pub fn pivot_status_command(root: &Path, repair: bool) -> i32 {
    use crate::status;
    let live = root == Path::new("/");
    let when = if live {
        status::When::Boot
    } else {
        status::When::Fixture
    };
    let check = || match status::check_pivot(root, when) {
        Ok(checks) => Some(checks),
        Err(e) => {
            eprintln!(
                "exitrd: cannot check the system below {}: {e}",
                root.display()
            );
            None
        }
    };
    let Some(mut checks) = check() else { return 2 };
    if repair && live && checks.iter().any(|c| !c.ok) {
        repair_run_initramfs();
        let Some(again) = check() else { return 2 };
        checks = again;
    }
    for c in &checks {
        println!("exitrd: [{}] {}", if c.ok { "ok" } else { "!!" }, c.detail);
    }
    let failed: Vec<&status::Check> = checks.iter().filter(|c| !c.ok).collect();
    if failed.is_empty() {
        return 0;
    }
    let prefix = warning_prefix();
    for c in &failed {
        eprintln!(
            "{prefix}exitrd: WARNING: the next shutdown will NOT pivot into exitrd: {}{}",
            c.detail,
            c.fix
                .as_deref()
                .map(|f| format!("; fix: {f}"))
                .unwrap_or_default()
        );
    }
    1
}

pub fn status_command(root: &std::path::Path, json: bool, repair: bool, boot_report: bool) -> i32 {
    use crate::status;
    let live = root == std::path::Path::new("/");
    // --repair and --boot-report are exitrd's units at boot (and --repair an admin's).
    let when = match (live, repair || boot_report) {
        (false, _) => status::When::Fixture,
        (true, true) => status::When::Boot,
        (true, false) => status::When::Later,
    };
    let mut s = match status::check(root, when) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "exitrd: cannot check the system below {}: {e}",
                root.display()
            );
            return 2;
        }
    };
    let repairable = |s: &status::Status| {
        s.checks
            .iter()
            .any(|c| !c.ok && (c.name == "exec-mount" || c.name == "payload"))
    };
    if repair && live && repairable(&s) {
        repair_run_initramfs();
        match status::check(root, when) {
            Ok(again) => s = again,
            Err(e) => {
                eprintln!("exitrd: cannot check the system again: {e}");
                return 2;
            }
        }
    }
    if (repair || boot_report) && live {
        report_last_shutdown(root, &s.last_shutdown);
    }
    if json {
        match serde_json::to_string_pretty(&s) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("exitrd: {e}");
                return 2;
            }
        }
    } else {
        status::print_human(&s);
    }
    if !s.ready && (repair || boot_report) {
        let reasons: Vec<&str> = s
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.detail.as_str())
            .collect();
        eprintln!(
            "{}exitrd: WARNING: the next shutdown will NOT take the storage stack apart: {}",
            warning_prefix(),
            reasons.join("; ")
        );
    }
    if s.ready {
        0
    } else {
        1
    }
}

/// At boot (exitrd.service): remembers this boot's id, and once per boot puts one entry
/// about the last shutdown into the journal; writes the node_exporter textfile if one is
/// configured.
pub(crate) fn report_last_shutdown(root: &Path, last: &crate::record::LastShutdown) {
    use crate::record;
    match record::remember_boot(root) {
        Ok(true) => {
            let mut fields = record::journal_fields(last);
            // The binary that made the entry: exitrd.service runs the payload's copy in
            // RAM when it is the installed build (journald's own _EXE is missing when the
            // process has exited before journald reads it, as this one often has).
            if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
                fields.push(("EXITRD_BINARY", exe.display().to_string()));
            }
            if let Err(e) = record::send_journal(root, &fields) {
                eprintln!("exitrd: cannot write to the journal: {e}");
            }
        }
        Ok(false) => {}
        Err(e) => eprintln!(
            "exitrd: cannot remember the boot id in /{}: {e}",
            record::BOOT_ID_FILE
        ),
    }
    if let Some(file) = crate::status::config(root).node_exporter_textfile {
        let path = root.join(file.trim_start_matches('/'));
        if let Err(e) = record::replace_file(&path, record::prometheus_text(last).as_bytes(), false)
        {
            eprintln!("exitrd: cannot write {}: {e}", path.display());
        }
    }
}

/// `exitrd prepare`: from a payload directory (the initramfs case), from an image
/// (`--from`), or built from the installed files. 0 prepared, 1 not.
pub fn prepare_command(payload: Option<&Path>, from: Option<&Path>, target: &Path) -> i32 {
    use crate::payload;
    let started = std::time::Instant::now();
    let result = match (payload, from) {
        (Some(dir), _) => payload::prepare(dir, target),
        (None, Some(image)) => payload::prepare_from_image(image, target),
        (None, None) => payload::prepare_installed(Path::new(payload::PAYLOAD_BUILDER), target),
    };
    match result {
        // The time is part of the line: the boot cost is measured from it (the benchmark
        // reads it on the console, whichever builder ran it).
        Ok(summary) => {
            eprintln!("exitrd: {summary} ({} ms)", started.elapsed().as_millis());
            0
        }
        Err(e) => {
            eprintln!(
                "exitrd: warning: could not prepare {}: {e}; the next shutdown will not \
                 take the storage stack apart",
                target.display()
            );
            1
        }
    }
}

/// `exitrd check-hook`: 0 when every hook is trusted, 1 when any is refused.
pub fn check_hook_command(root: &std::path::Path, hooks: &[PathBuf]) -> i32 {
    let mut refused = false;
    for hook in hooks {
        if let Err(msg) = crate::hookcheck::check_hook(root, hook) {
            eprintln!("exitrd: {msg}");
            refused = true;
        }
    }
    i32::from(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The warning's journal priority only where stderr is the journal stream systemd names.
    #[test]
    fn the_journal_stream_is_recognised_by_device_and_inode() {
        assert!(is_journal_stream(Some("8:12345"), 8, 12345));
        assert!(!is_journal_stream(Some("8:12345"), 8, 12346));
        assert!(!is_journal_stream(Some("9:12345"), 8, 12345));
        assert!(!is_journal_stream(None, 8, 12345));
        assert!(!is_journal_stream(Some(""), 0, 0));
        assert!(!is_journal_stream(Some("8"), 8, 0));
        assert!(!is_journal_stream(Some("x:y"), 0, 0));
    }

    /// At boot: the boot id is remembered and the textfile written, below the root.
    #[test]
    fn the_boot_unit_remembers_the_boot_and_writes_the_textfile() {
        let r = std::env::temp_dir().join(format!("exitrd-cli-boot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&r);
        for (p, t) in [
            ("proc/sys/kernel/random/boot_id", "this-boot\n"),
            (
                "etc/exitrd.conf",
                "NODE_EXPORTER_TEXTFILE=/var/lib/prometheus/node-exporter/exitrd.prom\n",
            ),
        ] {
            let f = r.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, t).unwrap();
        }
        std::fs::create_dir_all(r.join("var/lib/prometheus/node-exporter")).unwrap();
        let last = crate::record::last_shutdown(&r, &Default::default());
        report_last_shutdown(&r, &last);
        let id = std::fs::read_to_string(r.join(crate::record::BOOT_ID_FILE)).unwrap();
        assert_eq!(id, "this-boot\n");
        let prom = std::fs::read_to_string(r.join("var/lib/prometheus/node-exporter/exitrd.prom"))
            .unwrap();
        assert!(prom.contains("\nexitrd_last_shutdown_clean 0\n"), "{prom}");
        let _ = std::fs::remove_dir_all(&r);
    }
}
