//! The steps of a plan, and the words for them: what will be done (`describe`, for the
//! plan and the messages of a failure) and what was done (`describe_done`, logged when a
//! step succeeds), side by side so that the two tenses stay in step.

use crate::topology::block::{iscsi_names, DmKind};
use crate::topology::mountinfo::MountPath;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Step {
    /// Move a mount out of the old root because something below the old root's own
    /// mount still needs it: the medium holding a live system's squashfs, the file
    /// system of an MD array's external bitmap, an overlay's layers. It is unmounted
    /// from its new place once what needs it is gone.
    MoveOut {
        mount_point: MountPath,
        to: String,
    },
    SwapOff {
        path: String,
        device: Option<String>,
    },
    Unmount {
        mount_point: MountPath,
        fstype: String,
        source: String,
        device: Option<String>,
    },
    RemoveDm {
        device: String,
        name: String,
        kind: DmKind,
    },
    StopMd {
        device: String,
        level: String,
    },
    DetachLoop {
        device: String,
        backing_file: String,
    },
    /// Disconnect a network block device from its server, after its last user is gone
    /// (the network is still up: nothing before this step touches it).
    DisconnectNbd {
        device: String,
    },
    /// Log out of an iSCSI session once nothing uses its disks, which removes them. One
    /// step per session, after all of its disks (a target may export several LUNs): the
    /// logout takes them all, so it waits for the last one to be free.
    LogoutIscsi {
        /// The session's disk the step comes after: the last of them in the plan.
        device: String,
        /// The session's other disks, which go with it.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        other_disks: Vec<String>,
        session: u32,
        target: Option<String>,
        portal: Option<String>,
    },
}

impl Step {
    /// One line for humans: what will be done to what.
    pub fn describe(&self) -> String {
        match self {
            Step::MoveOut { mount_point, to } => {
                format!("move {mount_point} out of the way to {to} (still needed)")
            }
            Step::SwapOff { path, .. } => format!("swapoff {path}"),
            Step::Unmount {
                mount_point,
                fstype,
                source,
                ..
            } => format!("unmount {mount_point} ({fstype} on {source})"),
            Step::RemoveDm { device, name, kind } => match kind {
                DmKind::Lvm => format!("remove LVM volume {name} ({device})"),
                DmKind::Crypt => {
                    format!("close dm-crypt mapping {name} ({device}) and free its key")
                }
                DmKind::Other => format!("remove device-mapper device {name} ({device})"),
            },
            Step::StopMd { device, level } => format!("stop MD array {device} ({level})"),
            Step::DetachLoop {
                device,
                backing_file,
            } => format!("detach loop device {device} from {backing_file}"),
            Step::DisconnectNbd { device } => {
                format!("disconnect network block device {device}")
            }
            Step::LogoutIscsi { session, .. } => format!(
                "log out of iSCSI session {session}{} and remove its {}",
                self.iscsi_names(),
                self.iscsi_disks()
            ),
        }
    }

    /// The same line in the past tense, logged once the step is done. The VM tests match
    /// these lines whole: a change of wording is a change of the tests.
    pub fn describe_done(&self) -> String {
        match self {
            Step::MoveOut { mount_point, to } => {
                format!("moved {mount_point} to {to}: still needed")
            }
            Step::SwapOff { path, .. } => format!("swapoff {path}"),
            Step::Unmount {
                mount_point,
                fstype,
                source,
                ..
            } => format!("unmounted {mount_point} ({fstype} on {source})"),
            Step::RemoveDm { device, name, kind } => match kind {
                DmKind::Lvm => format!("removed LVM volume {name} ({device})"),
                DmKind::Crypt => {
                    format!("closed dm-crypt mapping {name} ({device}): key wiped from memory")
                }
                DmKind::Other => format!("removed device-mapper device {name} ({device})"),
            },
            Step::StopMd { device, level } => format!("stopped MD array {device} ({level})"),
            Step::DetachLoop {
                device,
                backing_file,
            } => format!("detached loop device {device} from {backing_file}"),
            Step::DisconnectNbd { device } => {
                format!("disconnected network block device {device}")
            }
            Step::LogoutIscsi { session, .. } => format!(
                "logged out of iSCSI session {session}{}: {} gone",
                self.iscsi_names(),
                self.iscsi_disks()
            ),
        }
    }

    /// The line logged for a step that closed its device without the goodbye its protocol
    /// has (`why` says what happened): an iSCSI session torn down without a logout (the
    /// target did not answer, or its connection had failed). Steps of other kinds never
    /// end so; for them it is the done line with the reason.
    pub fn describe_dropped(&self, why: &str) -> String {
        match self {
            Step::LogoutIscsi { session, .. } => format!(
                "dropped iSCSI session {session}{} without a logout: {why}; {} gone",
                self.iscsi_names(),
                self.iscsi_disks()
            ),
            other => format!("{} ({why})", other.describe_done()),
        }
    }

    /// ` (TARGET on PORTAL)` of a logout step.
    fn iscsi_names(&self) -> String {
        match self {
            Step::LogoutIscsi { target, portal, .. } => {
                iscsi_names(target.as_deref(), portal.as_deref())
            }
            _ => String::new(),
        }
    }

    /// `disk sda`, `disks sda, sdb` of a logout step.
    fn iscsi_disks(&self) -> String {
        let mut disks = self.closes_devices();
        disks.sort_unstable();
        let noun = if disks.len() == 1 { "disk" } else { "disks" };
        format!("{noun} {}", disks.join(", "))
    }

    /// The kernel block device this step closes, if it closes one: the one it is planned
    /// after, when it closes several (see [`Step::closes_devices`]).
    pub fn closes_device(&self) -> Option<&str> {
        match self {
            Step::RemoveDm { device, .. }
            | Step::StopMd { device, .. }
            | Step::DetachLoop { device, .. }
            | Step::DisconnectNbd { device }
            | Step::LogoutIscsi { device, .. } => Some(device),
            Step::MoveOut { .. } | Step::SwapOff { .. } | Step::Unmount { .. } => None,
        }
    }

    /// Every kernel block device this step closes: an iSCSI logout removes all the disks
    /// of its session.
    pub fn closes_devices(&self) -> Vec<&str> {
        let mut devices: Vec<&str> = self.closes_device().into_iter().collect();
        if let Step::LogoutIscsi { other_disks, .. } = self {
            devices.extend(other_disks.iter().map(String::as_str));
        }
        devices
    }
}
