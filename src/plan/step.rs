//! The steps of a plan, and the words for them: what will be done (`describe`, for the
//! plan and the messages of a failure) and what was done (`describe_done`, logged when a
//! step succeeds), side by side so that the two tenses stay in step.

use crate::topology::block::DmKind;
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
        }
    }

    /// The kernel block device this step closes, if it closes one.
    pub fn closes_device(&self) -> Option<&str> {
        match self {
            Step::RemoveDm { device, .. }
            | Step::StopMd { device, .. }
            | Step::DetachLoop { device, .. }
            | Step::DisconnectNbd { device } => Some(device),
            Step::MoveOut { .. } | Step::SwapOff { .. } | Step::Unmount { .. } => None,
        }
    }
}
