use super::*;
use crate::topology::block::{BlockDev, DevKind, DmKind};
use crate::topology::mountinfo;
use std::io;

/// A pretend machine: steps change its topology the way the kernel would, and take
/// pretend time.
struct Fake {
    topo: Topology,
    clock: Duration,
    step_cost: Duration,
    /// Outcomes to give, by step description, before behaving normally.
    scripted: BTreeMap<String, Vec<&'static str>>,
    attempts: BTreeMap<String, usize>,
    log: Vec<String>,
}

fn dev(name: &str, minor: u32, kind: DevKind, holders: &[&str], slaves: &[&str]) -> BlockDev {
    BlockDev {
        name: name.into(),
        major: 252,
        minor,
        kind,
        holders: holders.iter().map(|s| s.to_string()).collect(),
        slaves: slaves.iter().map(|s| s.to_string()).collect(),
    }
}

impl Fake {
    fn lvm_luks_md() -> Fake {
        let mounts = mountinfo::parse(
            "29 30 252:1 / /oldroot ro - ext4 /dev/mapper/vg0-root ro\n\
             26 29 0:6 / /oldroot/dev rw - devtmpfs udev rw\n\
             27 26 0:24 / /oldroot/dev/pts rw - devpts devpts rw\n\
             30 1 0:26 / / rw - tmpfs exitrd rw\n",
        )
        .unwrap();
        let devices = [
            dev("vda", 16, DevKind::Disk, &["md0"], &[]),
            dev(
                "md0",
                20,
                DevKind::Md {
                    level: "raid1".into(),
                },
                &["dm-0"],
                &["vda"],
            ),
            dev(
                "dm-0",
                0,
                DevKind::Dm {
                    name: "md0_crypt".into(),
                    uuid: "CRYPT-LUKS2-x".into(),
                    kind: DmKind::Crypt,
                },
                &["dm-1"],
                &["md0"],
            ),
            dev(
                "dm-1",
                1,
                DevKind::Dm {
                    name: "vg0-root".into(),
                    uuid: "LVM-x".into(),
                    kind: DmKind::Lvm,
                },
                &[],
                &["dm-0"],
            ),
        ];
        Fake {
            topo: Topology {
                mounts,
                swaps: Vec::new(),
                devices: devices.into_iter().map(|d| (d.name.clone(), d)).collect(),
                md_bitmap_files: Default::default(),
                warnings: Vec::new(),
                unreachable_loop_files: Default::default(),
            },
            clock: Duration::ZERO,
            step_cost: Duration::from_millis(100),
            scripted: BTreeMap::new(),
            attempts: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    fn script(mut self, step: &str, outcomes: &[&'static str]) -> Fake {
        self.scripted.insert(step.into(), outcomes.to_vec());
        self
    }

    fn apply(&mut self, step: &Step) {
        match step {
            Step::Unmount { mount_point, .. } => {
                self.topo.mounts.retain(|m| &m.mount_point != mount_point)
            }
            Step::MoveOut { mount_point, to } => {
                for m in self.topo.mounts.iter_mut() {
                    if &m.mount_point == mount_point {
                        m.mount_point = to.as_str().into();
                    }
                }
                for f in self.topo.md_bitmap_files.values_mut() {
                    if let Some(rest) = f.strip_prefix(mount_point.as_lossy_str()) {
                        *f = format!("{to}{rest}");
                    }
                }
            }
            other => {
                for gone in other.closes_devices() {
                    let gone = gone.to_string();
                    self.topo.devices.remove(&gone);
                    for d in self.topo.devices.values_mut() {
                        d.holders.retain(|h| *h != gone);
                    }
                }
            }
        }
    }
}

impl Executor for Fake {
    fn read(&mut self) -> Option<Topology> {
        Some(self.topo.clone())
    }

    fn run(&mut self, step: &Step, _topo: &Topology, timeout: Duration) -> Outcome {
        let key = step.describe();
        *self.attempts.entry(key.clone()).or_default() += 1;
        let scripted = self.scripted.get_mut(&key).and_then(|v| {
            if v.is_empty() {
                None
            } else {
                Some(v.remove(0))
            }
        });
        match scripted {
            Some("hang") => {
                self.clock += timeout;
                Outcome::TimedOut
            }
            Some("busy") => {
                self.clock += self.step_cost;
                Outcome::Failed(io::Error::from_raw_os_error(nix::libc::EBUSY))
            }
            Some("gone") => {
                // Went by itself (deferred removal) before the step ran.
                self.apply(step);
                Outcome::Gone
            }
            Some("lingering") => {
                // Went by itself, but its sysfs entry is still there at the next read
                // (the kernel's deferred removal finishing).
                Outcome::Gone
            }
            Some("dropped") => {
                // Closed without the protocol's goodbye (an iSCSI target that did not
                // answer the logout).
                self.clock += self.step_cost;
                self.apply(step);
                Outcome::Dropped("the target did not answer".into())
            }
            Some("slow") => {
                // Takes longer than allowed: the worker is abandoned at the timeout.
                self.clock += timeout;
                Outcome::TimedOut
            }
            _ => {
                self.clock += self.step_cost;
                self.apply(step);
                Outcome::Done
            }
        }
    }

    fn elapsed(&self) -> Duration {
        self.clock
    }

    fn pause(&mut self, d: Duration) {
        self.clock += d;
    }

    fn report(&mut self, step: &Step, outcome: &Outcome) {
        self.log.push(format!("{} -> {outcome}", step.describe()));
    }
}

fn limits(deadline_s: u64) -> Limits {
    Limits {
        deadline: Duration::from_secs(deadline_s),
        step_timeout: Duration::from_secs(10),
        max_passes: 8,
    }
}

fn all(_: &Step) -> bool {
    true
}

/// One shutdown's worth of passes over `fake`, with `which` selecting the steps.
fn run(fake: &mut Fake, which: &dyn Fn(&Step) -> bool, deadline_s: u64) -> Progress {
    let mut p = Progress::default();
    run_passes(
        fake,
        which,
        &PlanOptions::shutdown(),
        limits(deadline_s),
        &mut p,
    );
    p
}

#[test]
fn clean_run_takes_everything_down_in_one_pass() {
    let mut fake = Fake::lvm_luks_md();
    let p = run(&mut fake, &all, 60);
    let done: Vec<String> = p.done.iter().map(|s| s.describe()).collect();
    assert_eq!(
        done,
        vec![
            "unmount /oldroot/dev/pts (devpts on devpts)",
            "unmount /oldroot/dev (devtmpfs on udev)",
            "unmount /oldroot (ext4 on /dev/mapper/vg0-root)",
            "remove LVM volume vg0-root (dm-1)",
            "close dm-crypt mapping md0_crypt (dm-0) and free its key",
            "stop MD array md0 (raid1)",
        ]
    );
    assert!(p.failed.is_empty() && !p.out_of_time);
    assert_eq!(p.passes, 1);
}

#[test]
fn a_device_that_went_by_itself_counts_as_closed() {
    let lv = "remove LVM volume vg0-root (dm-1)";
    let mut fake = Fake::lvm_luks_md().script(lv, &["gone"]);
    let p = run(&mut fake, &all, 60);
    assert!(
        fake.log.contains(&format!("{lv} -> already gone")),
        "{:?}",
        fake.log
    );
    assert!(p.done.iter().any(|s| s.describe() == lv));
    assert_eq!(p.done.len(), 6);
    assert!(p.failed.is_empty(), "{:?}", p.failed);
    assert_eq!(fake.attempts[lv], 1);
    // Closed, but by the kernel: the inventory must not say exitrd did it.
    assert_eq!(p.gone_by_kernel.iter().collect::<Vec<_>>(), ["dm-1"]);
}

/// A device closed without its protocol's goodbye is closed, by exitrd, and not tried
/// again.
#[test]
fn a_device_dropped_without_a_goodbye_counts_as_closed_by_exitrd() {
    let md = "stop MD array md0 (raid1)";
    let mut fake = Fake::lvm_luks_md().script(md, &["dropped"]);
    let p = run(&mut fake, &all, 60);
    assert!(
        fake.log.contains(&format!(
            "{md} -> done without the protocol's goodbye: the target did not answer"
        )),
        "{:?}",
        fake.log
    );
    assert_eq!(p.done.len(), 6);
    assert_eq!(fake.attempts[md], 1);
    assert!(p.failed.is_empty() && p.gone_by_kernel.is_empty(), "{p:?}");
}

/// Seen on trixie's encrypted LVM: the kernel removed the LUKS mapping (deferred removal)
/// while its sysfs entry lingered, and every later pass tried it again and logged "is
/// gone" once more (four lines for one device). Gone once is gone for the run.
#[test]
fn a_device_found_gone_is_not_tried_again_while_its_entry_lingers() {
    let lv = "remove LVM volume vg0-root (dm-1)";
    let mut fake = Fake::lvm_luks_md().script(lv, &["lingering"]);
    let p = run(&mut fake, &all, 60);
    assert_eq!(fake.attempts[lv], 1, "{:?}", fake.log);
    let reports = fake.log.iter().filter(|l| l.starts_with(lv)).count();
    assert_eq!(reports, 1, "{:?}", fake.log);
    assert_eq!(p.gone_by_kernel.iter().collect::<Vec<_>>(), ["dm-1"]);
}

#[test]
fn devices_closed_by_our_own_steps_are_not_counted_as_the_kernels() {
    let mut fake = Fake::lvm_luks_md();
    let p = run(&mut fake, &all, 60);
    assert!(p.gone_by_kernel.is_empty(), "{:?}", p.gone_by_kernel);
}

#[test]
fn a_failed_step_is_retried_only_after_something_else_changed() {
    // The root is busy once (a process still exiting), everything else works: the root
    // is retried in the second pass because dev/pts and dev went in the first.
    let mut fake =
        Fake::lvm_luks_md().script("unmount /oldroot (ext4 on /dev/mapper/vg0-root)", &["busy"]);
    let p = run(&mut fake, &all, 60);
    assert_eq!(
        fake.attempts["unmount /oldroot (ext4 on /dev/mapper/vg0-root)"],
        2
    );
    assert!(p.failed.is_empty(), "{:?}", p.failed);
    assert_eq!(p.done.len(), 6);
}

#[test]
fn a_step_that_keeps_failing_without_change_is_not_repeated() {
    let root = "unmount /oldroot (ext4 on /dev/mapper/vg0-root)";
    let mut fake = Fake::lvm_luks_md().script(root, &["busy"; 20]);
    let p = run(&mut fake, &all, 60);
    // First pass: fails after dev/pts and dev succeeded (generation 2). The second pass
    // tries it once more (the system changed), then nothing changes: stop.
    assert_eq!(fake.attempts[root], 2);
    assert!(p.failed.contains_key(root));
    // The devices under it were tried (they fail in reality; here the fake lets them go)
    // but the run ended well before the deadline.
    assert!(fake.clock < Duration::from_secs(5), "{:?}", fake.clock);
}

#[test]
fn a_hanging_step_is_abandoned_and_the_rest_goes_on() {
    let lv = "remove LVM volume vg0-root (dm-1)";
    let mut fake = Fake::lvm_luks_md().script(lv, &["hang"; 20]);
    let p = run(&mut fake, &all, 60);
    assert_eq!(
        fake.attempts[lv], 1,
        "a timed-out step is never tried again"
    );
    assert!(p.abandoned.contains(lv));
    assert!(p.failed[lv].contains("timed out"));
    // The step got the full step timeout, not more.
    assert!(fake.clock >= Duration::from_secs(10) && fake.clock < Duration::from_secs(12));
}

#[test]
fn the_deadline_caps_each_step_and_the_run() {
    // Every step hangs; deadline 15 s with 10 s per step: the second step only gets the
    // 5 s that are left, and the run stops at the deadline.
    let mut fake = Fake::lvm_luks_md()
        .script("unmount /oldroot/dev/pts (devpts on devpts)", &["slow"])
        .script("unmount /oldroot/dev (devtmpfs on udev)", &["slow"])
        .script("unmount /oldroot (ext4 on /dev/mapper/vg0-root)", &["slow"]);
    let p = run(&mut fake, &all, 15);
    assert_eq!(fake.clock, Duration::from_secs(15));
    assert!(p.out_of_time);
    assert_eq!(p.abandoned.len(), 2);
}

#[test]
fn a_filter_runs_only_the_selected_steps() {
    let mut fake = Fake::lvm_luks_md();
    let unmounts_only = |s: &Step| s.closes_device().is_none();
    let p = run(&mut fake, &unmounts_only, 60);
    assert_eq!(p.done.len(), 3);
    assert_eq!(fake.topo.devices.len(), 4);
}

/// Root on an MD array whose bitmap file lives on another file system (the VM's
/// lvm-cache-thin): the unmount-only round moves that file system out of the way and
/// unmounts the root, but leaves it mounted until the array is stopped.
#[test]
fn the_unmount_only_round_leaves_what_a_device_still_needs() {
    let mut fake = Fake::lvm_luks_md();
    fake.topo.mounts = mountinfo::parse(
        "30 1 0:26 / / rw - tmpfs exitrd rw\n\
         29 30 252:20 / /oldroot ro - ext4 /dev/md0 ro\n\
         31 29 252:32 / /oldroot/bitmap rw - ext4 /dev/vdc rw\n",
    )
    .unwrap();
    fake.topo.devices = [
        dev("vda", 16, DevKind::Disk, &["md0"], &[]),
        dev("vdc", 32, DevKind::Disk, &[], &[]),
        dev(
            "md0",
            20,
            DevKind::Md {
                level: "raid1".into(),
            },
            &[],
            &["vda"],
        ),
    ]
    .into_iter()
    .map(|d| (d.name.clone(), d))
    .collect();
    fake.topo
        .md_bitmap_files
        .insert("md0".into(), "/oldroot/bitmap/md0.bitmap".into());
    let mut p = Progress::default();
    let unmounts_only = |s: &Step| s.closes_device().is_none();
    run_passes(
        &mut fake,
        &unmounts_only,
        &PlanOptions::shutdown(),
        limits(60),
        &mut p,
    );
    let done = |p: &Progress| -> Vec<String> { p.done.iter().map(|s| s.describe()).collect() };
    assert_eq!(
        done(&p),
        vec![
            "move /oldroot/bitmap out of the way to /exitrd-held/31 (still needed)",
            "unmount /oldroot (ext4 on /dev/md0)",
        ]
    );
    assert!(
        !fake.log.iter().any(|l| l.contains("/exitrd-held/31 (ext4")),
        "{:?}",
        fake.log
    );
    run_passes(
        &mut fake,
        &all,
        &PlanOptions::shutdown(),
        limits(60),
        &mut p,
    );
    assert_eq!(
        done(&p)[2..],
        [
            "stop MD array md0 (raid1)",
            "unmount /exitrd-held/31 (ext4 on /dev/vdc)",
        ]
    );
    assert!(p.failed.is_empty(), "{:?}", p.failed);
}
