//! Logging out of iSCSI sessions through the kernel's iSCSI netlink interface
//! (`NETLINK_ISCSI`), written from the kernel's `include/scsi/iscsi_if.h`, which is not a
//! uapi header. Read in Linux 6.17-rc3 (file versions of commit 0291023e7330 in the
//! Kingxukai/linux mirror: the stored torvalds/linux copies predate UNBIND_SESSION),
//! with `drivers/scsi/scsi_transport_iscsi.c` (`iscsi_if_rx`, `iscsi_if_recv_msg`,
//! `iscsi_if_send_reply`, `iscsi_recv_pdu`, `iscsi_if_stop_conn`, `__iscsi_unbind_session`)
//! and `drivers/scsi/libiscsi.c` (`__iscsi_conn_send_pdu`, `iscsi_prep_mgmt_task`,
//! `__iscsi_complete_pdu`); the order of the requests is the one iscsid uses
//! (open-iscsi bc236140ff0f, `usr/initiator.c`: `session_logout_task`, `iscsi_stop`,
//! `iscsi_send_logout`, `session_conn_shutdown`; `usr/netlink.c`).
//!
//! iscsid, which would log out, went with the old system; the kernel keeps the session,
//! and its connection, which user space handed it at login. So exitrd does what iscsid
//! does, once nothing uses the session's disks:
//! 1. UNBIND_SESSION: the kernel removes the session's SCSI devices in a work item, while
//!    the connection is still up, so that sd's cache flush reaches the target; it says so
//!    with an UNBIND_SESSION event;
//! 2. SEND_PDU with a Logout Request (RFC 7143 11.14: immediate, final, "close the
//!    session"; the kernel fills in the task tag and the sequence numbers), and the
//!    target's Logout Response, which the kernel passes on as a RECV_PDU event to the
//!    iscsid multicast group;
//! 3. STOP_CONN (terminate), DESTROY_CONN for each connection, DESTROY_SESSION: this ends
//!    the session in the kernel, which would otherwise keep failing I/O over to a
//!    recovery that nobody will make.
//!
//! A session whose connection has already failed (the target went away) skips 1 and 2;
//! so does a target that does not answer the logout within a few seconds: 3 is still done,
//! and the result says the session was dropped without a logout.
//!
//! Every request is answered by the kernel before `sendto` returns (unicast to our
//! socket, with the request's type, or `ISCSI_KEVENT_IF_ERROR` and an errno); every wait
//! here is bounded. The requests themselves run in the kernel in our context and are
//! bounded by the runtime's worker, like every teardown call.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::devnode::{errno, node_for, retry_for, with_context};
use super::Closed;
use crate::topology::block::{host_and_session, iscsi_connections, DevKind};
use crate::topology::Topology;

/// `NETLINK_ISCSI` in `<linux/netlink.h>`.
const NETLINK_ISCSI: libc::c_int = 8;
/// `ISCSI_NL_GRP_ISCSID`: the multicast group of the kernel's events for iscsid (a
/// received PDU, a connection error, an unbound session). Bound as a group bit mask.
const GROUP_ISCSID: u32 = 1;

// `enum iscsi_uevent_e`: requests (UEVENT_BASE 10 + n) and events (KEVENT_BASE 100 + n).
const ISCSI_UEVENT_DESTROY_SESSION: u32 = 12;
const ISCSI_UEVENT_DESTROY_CONN: u32 = 14;
const ISCSI_UEVENT_STOP_CONN: u32 = 18;
const ISCSI_UEVENT_SEND_PDU: u32 = 19;
const ISCSI_UEVENT_UNBIND_SESSION: u32 = 27;
const ISCSI_KEVENT_RECV_PDU: u32 = 101;
const ISCSI_KEVENT_CONN_ERROR: u32 = 102;
const ISCSI_KEVENT_IF_ERROR: u32 = 103;
const ISCSI_KEVENT_UNBIND_SESSION: u32 = 105;

/// `STOP_CONN_TERM`: the connection ends for good (not a recovery).
const STOP_CONN_TERM: u32 = 1;
/// `CAP_LOGIN_OFFLOAD` of a transport's `caps`: its hardware logs in, and out, by itself.
const CAP_LOGIN_OFFLOAD: u32 = 0x4000;

/// `struct iscsi_uevent`: `type` and `iferror` (u32), `transport_handle` (u64), then the
/// union `u` of request arguments (24 bytes: its largest members hold a u64) and the
/// union `r` of answers and event data (16 bytes); 8-byte aligned, 56 bytes. Netlink
/// carries it in the host's byte order.
const UEVENT_SIZE: usize = 56;
const TYPE_AT: usize = 0;
const IFERROR_AT: usize = 4;
const HANDLE_AT: usize = 8;
/// The union `u`.
const U_AT: usize = 16;
/// The union `r`.
const R_AT: usize = 40;

/// `struct iscsi_hdr`: a PDU's basic header segment, 48 bytes (RFC 7143 11.2.1).
const BHS_SIZE: usize = 48;
/// Opcodes (RFC 7143 11.14, 11.15) and the bits around them.
const OP_LOGOUT: u8 = 0x06;
const OP_LOGOUT_RSP: u8 = 0x26;
const OP_IMMEDIATE: u8 = 0x40;
const OPCODE_MASK: u8 = 0x3f;
const FLAG_FINAL: u8 = 0x80;
/// The Logout Request's reason code: close the session (all its connections).
const LOGOUT_REASON_CLOSE_SESSION: u8 = 0;

/// `struct nlmsghdr`: length, type, flags, sequence, port id.
const NLMSG_HDRLEN: usize = 16;

/// How long each wait may last. The step's own limit caps them all.
#[derive(Debug, Clone, Copy)]
struct Waits {
    /// For the kernel's answer to a request: queued before the request returns.
    reply: Duration,
    /// For the kernel to remove the session's disks after UNBIND_SESSION (their cache
    /// flush goes to the target).
    unbind: Duration,
    /// For the target's Logout Response.
    logout: Duration,
    /// Kept for stopping and destroying the session after the waits above.
    teardown: Duration,
    /// Kept before the step's limit, so the function returns before its worker is given up.
    margin: Duration,
}

const WAITS: Waits = Waits {
    reply: Duration::from_secs(2),
    unbind: Duration::from_secs(5),
    logout: Duration::from_secs(5),
    teardown: Duration::from_secs(2),
    margin: Duration::from_millis(200),
};

/// How long the kernel may take to drop the destroyed session's disks from sysfs.
const SETTLE: Duration = Duration::from_secs(2);
/// How long a disk may still show held after the device above it went.
const HELD: Duration = Duration::from_secs(1);

/// Logs out of iSCSI session `session`, whose disks are `disks` (kernel name, device
/// number), and removes them; returns within about `limit`.
///
/// `root` is where `/proc` and `/sys` are (`/`; a fixture in tests). Fails, touching
/// nothing, while anything uses one of the disks, or while an iscsid runs (it would take
/// the kernel's events for its own). [`Closed::Dropped`] says the session was torn down
/// without a logout, and why; [`Closed::Gone`], that it was gone already.
pub fn logout(
    root: &Path,
    session: u32,
    disks: &[(String, (u32, u32))],
    limit: Duration,
) -> io::Result<Closed> {
    let until = Instant::now() + limit.saturating_sub(WAITS.margin);
    let sys = root.join("sys");
    let Some(facts) = Session::read(&sys, session)? else {
        return Ok(Closed::Gone);
    };
    // The runtime ends iscsid with the old system (it is no `@` process); one spared
    // would be ended before the step is tried again.
    if let Some(pid) = iscsid_running(&root.join("proc")) {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "iscsi: iscsid (pid {pid}) is still running: it would answer the kernel's \
                 events itself (a logout's answer makes it log in again), so session {session} \
                 is left to it"
            ),
        ));
    }
    let names: Vec<String> = disks.iter().map(|(n, _)| n.clone()).collect();
    // Right after the device above a disk went, the kernel may show the disk held for a
    // moment yet (as it does MD arrays): a busy disk is looked at again, briefly.
    retry_for(
        HELD.min(until.saturating_duration_since(Instant::now())),
        || unused(root, &facts, disks, &names),
        |e| e.kind() == io::ErrorKind::ResourceBusy || errno(e) == Some(libc::EBUSY),
    )?;
    let mut kernel = Netlink::open()?;
    let closed = run(&mut kernel, &facts, &sys, until, WAITS, None)?;
    let class_dir = sys.join("class/block");
    retry_for(
        SETTLE.min(until.saturating_duration_since(Instant::now())),
        || match names.iter().find(|n| class_dir.join(n).exists()) {
            Some(n) => Err(io::Error::other(format!(
                "iscsi: session {session} is destroyed, but {n} is still in sysfs"
            ))),
            None => Ok(()),
        },
        |_| true,
    )?;
    Ok(closed)
}

/// Ends iSCSI session `session` in the kernel without a logout, whatever uses its disks:
/// for the very end of a shutdown whose last sync timed out, when writes still wait on a
/// target that stopped answering. Otherwise the kernel's power-off would wait on it too:
/// sd flushes every disk's cache as the machine goes down, and without iscsid to recover
/// the session that waits for the SCSI timeout and the error handling (31 s seen in
/// iscsi-target-gone). Ending the connection fails what still waits on it, at once; what
/// it held was lost with the target already. `why` is the reason the result gives.
pub fn drop_session(root: &Path, session: u32, why: &str, limit: Duration) -> io::Result<Closed> {
    let until = Instant::now() + limit.saturating_sub(WAITS.margin);
    let sys = root.join("sys");
    let Some(facts) = Session::read(&sys, session)? else {
        return Ok(Closed::Gone);
    };
    let mut kernel = Netlink::open()?;
    run(
        &mut kernel,
        &facts,
        &sys,
        until,
        WAITS,
        Some(why.to_string()),
    )
}

/// Fails, naming the disk and what holds it, while anything uses one of `disks`.
fn unused(
    root: &Path,
    facts: &Session,
    disks: &[(String, (u32, u32))],
    names: &[String],
) -> io::Result<()> {
    let session = facts.sid;
    let topo = Topology::read(root)?;
    if let Some((disk, what)) = in_use(&topo, names) {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!("iscsi: {disk} is still in use ({what}): session {session} not logged out"),
        ));
    }
    // With the session up, the kernel's own word: an exclusive open fails while a file
    // system, a swap area or a stacked device claims the disk. With it down, an open
    // may wait for the session's recovery, which nobody will make: the check above is
    // all there is then.
    if facts.logged_in() {
        for (name, (major, minor)) in disks {
            claim(name, *major, *minor, session)?;
        }
    }
    Ok(())
}

/// Opens disk `name` exclusively and closes it again: fails with `EBUSY` while anything
/// claims it.
fn claim(name: &str, major: u32, minor: u32, session: u32) -> io::Result<()> {
    let node = node_for(name, major, minor)?;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_EXCL)
        .open(&node)
        .map(drop)
        .map_err(|e| {
            let what = if e.raw_os_error() == Some(libc::EBUSY) {
                format!(
                    "iscsi: {name} is still in use (a file system, swap area or device \
                     holds it): session {session} not logged out"
                )
            } else {
                format!("iscsi: opening {}", node.display())
            };
            with_context(e, what)
        })
}

/// The first of `disks` (kernel names) that something in `topo` still uses, and what:
/// a device stacked on it or on one of its partitions, a mount or a swap area on them.
fn in_use(topo: &Topology, disks: &[String]) -> Option<(String, String)> {
    for disk in disks {
        let parts = topo.devices.values().filter(|d| {
            d.name == *disk
                || matches!(&d.kind, DevKind::Partition { parent: Some(p) } if p == disk)
        });
        for d in parts {
            if let Some(h) = d.holders.first() {
                let holder = topo.devices.get(h).map_or(h.as_str(), |x| x.display_name());
                return Some((disk.clone(), format!("{} is held by {holder}", d.name)));
            }
            let number = (d.major, d.minor);
            if let Some(m) = topo
                .mounts
                .iter()
                .find(|m| m.is_block_backed() && (m.major, m.minor) == number)
            {
                return Some((
                    disk.clone(),
                    format!("{} is mounted on {}", d.name, m.mount_point),
                ));
            }
            if topo.swaps.iter().any(|s| {
                topo.device_by_path(&s.path)
                    .is_some_and(|x| x.name == d.name)
            }) {
                return Some((disk.clone(), format!("{} is a swap area in use", d.name)));
            }
        }
    }
    None
}

/// The pid of a running iscsid, from `/proc/PID/comm` (which, unlike `cmdline`, never
/// waits on the process). Kernel threads have no executable.
fn iscsid_running(proc_root: &Path) -> Option<i32> {
    let own = std::process::id();
    std::fs::read_dir(proc_root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            (u32::try_from(pid).ok()? != own).then_some((pid, e.path()))
        })
        .find(|(_, dir)| {
            std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim_end() == "iscsid")
                && std::fs::read_link(dir.join("exe")).is_ok()
        })
        .map(|(pid, _)| pid)
}

/// What the teardown needs to know about a session, from sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    sid: u32,
    /// `LOGGED_IN`, `FAILED` (the connection failed; the kernel waits for a recovery) or
    /// `FREE` (it gave up waiting).
    state: String,
    /// Which transport module runs it, for the kernel: `iscsi_transport/NAME/handle`.
    handle: u64,
    caps: u32,
    /// Its connections, the leading one first.
    connections: Vec<u32>,
}

impl Session {
    /// `None` when the session is gone.
    fn read(sys: &Path, sid: u32) -> io::Result<Option<Session>> {
        let dir = sys.join(format!("class/iscsi_session/session{sid}"));
        if !dir.exists() {
            return Ok(None);
        }
        let attr = |path: PathBuf| -> io::Result<String> {
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(|e| with_context(e, format!("iscsi: reading {}", path.display())))
        };
        let state = attr(dir.join("state"))?;
        // sys/class/iscsi_session/sessionS links to .../hostH/sessionS/...
        let (_, host) = std::fs::read_link(&dir)
            .ok()
            .and_then(|l| host_and_session(&l))
            .ok_or_else(|| {
                io::Error::other(format!(
                    "iscsi: no SCSI host in the sysfs path of {}",
                    dir.display()
                ))
            })?;
        // The transport is named by the module's SCSI host template, as iscsid finds it:
        // `iscsi_tcp` runs transport `tcp`, `iscsi_iser` runs `iser`, `bnx2i` runs `bnx2i`.
        let proc_name = attr(sys.join(format!("class/scsi_host/host{host}/proc_name")))?;
        let transport = proc_name.strip_prefix("iscsi_").unwrap_or(&proc_name);
        let tdir = sys.join("class/iscsi_transport").join(transport);
        let handle_text = attr(tdir.join("handle"))?;
        let handle = handle_text.parse().map_err(|_| {
            io::Error::other(format!(
                "iscsi: {}: not a transport handle: {handle_text:?}",
                tdir.join("handle").display()
            ))
        })?;
        let caps = attr(tdir.join("caps"))
            .ok()
            .and_then(|c| u32::from_str_radix(c.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0);
        Ok(Some(Session {
            sid,
            state,
            handle,
            caps,
            connections: iscsi_connections(sys, sid),
        }))
    }

    fn logged_in(&self) -> bool {
        self.state == "LOGGED_IN"
    }
}

/// A `struct iscsi_uevent`, as bytes in the host's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Uevent([u8; UEVENT_SIZE]);

impl Uevent {
    fn request(kind: u32, handle: u64) -> Uevent {
        let mut ev = Uevent([0; UEVENT_SIZE]);
        ev.put_u32(TYPE_AT, kind);
        ev.put_u64(HANDLE_AT, handle);
        ev
    }

    /// The uevent at the start of a message from the kernel.
    fn parse(payload: &[u8]) -> Option<Uevent> {
        Some(Uevent(payload.get(..UEVENT_SIZE)?.try_into().ok()?))
    }

    fn put_u32(&mut self, at: usize, value: u32) {
        if let Some(b) = self.0.get_mut(at..at + 4) {
            b.copy_from_slice(&value.to_ne_bytes());
        }
    }

    fn put_u64(&mut self, at: usize, value: u64) {
        if let Some(b) = self.0.get_mut(at..at + 8) {
            b.copy_from_slice(&value.to_ne_bytes());
        }
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32_at(&self.0, at).unwrap_or(0)
    }

    fn kind(&self) -> u32 {
        self.u32_at(TYPE_AT)
    }

    /// `iferror` of an `ISCSI_KEVENT_IF_ERROR` answer: a negative errno.
    fn iferror(&self) -> i32 {
        self.u32_at(IFERROR_AT) as i32
    }

    /// `r.retcode`: what the transport said to a request it carried out.
    fn retcode(&self) -> i32 {
        self.u32_at(R_AT) as i32
    }

    /// `u.d_session`: UNBIND_SESSION, DESTROY_SESSION.
    fn for_session(kind: u32, handle: u64, sid: u32) -> Uevent {
        let mut ev = Uevent::request(kind, handle);
        ev.put_u32(U_AT, sid);
        ev
    }

    /// `u.d_conn`: DESTROY_CONN.
    fn destroy_conn(handle: u64, sid: u32, cid: u32) -> Uevent {
        let mut ev = Uevent::request(ISCSI_UEVENT_DESTROY_CONN, handle);
        ev.put_u32(U_AT, sid);
        ev.put_u32(U_AT + 4, cid);
        ev
    }

    /// `u.stop_conn`: sid, cid, `conn_handle` (u64, unused by the kernel), flag.
    fn stop_conn(handle: u64, sid: u32, cid: u32, flag: u32) -> Uevent {
        let mut ev = Uevent::request(ISCSI_UEVENT_STOP_CONN, handle);
        ev.put_u32(U_AT, sid);
        ev.put_u32(U_AT + 4, cid);
        ev.put_u32(U_AT + 16, flag);
        ev
    }

    /// `u.send_pdu`: sid, cid, `hdr_size`, `data_size`; the PDU follows the uevent.
    fn send_pdu(handle: u64, sid: u32, cid: u32, hdr_size: u32, data_size: u32) -> Uevent {
        let mut ev = Uevent::request(ISCSI_UEVENT_SEND_PDU, handle);
        ev.put_u32(U_AT, sid);
        ev.put_u32(U_AT + 4, cid);
        ev.put_u32(U_AT + 8, hdr_size);
        ev.put_u32(U_AT + 12, data_size);
        ev
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// A Logout Request's basic header segment: immediate (it needs no command window),
/// final, reason "close the session". The kernel fills in the task tag, CmdSN and
/// ExpStatSN (libiscsi's `iscsi_prep_mgmt_task`); the task tag must not be the reserved
/// 0xffffffff for it to, and the CID is unused with this reason.
fn logout_request() -> [u8; BHS_SIZE] {
    let mut bhs = [0u8; BHS_SIZE];
    bhs[0] = OP_LOGOUT | OP_IMMEDIATE;
    bhs[1] = FLAG_FINAL | LOGOUT_REASON_CLOSE_SESSION;
    bhs
}

/// The response code of a Logout Response header (RFC 7143 11.15.1), `None` for any
/// other PDU.
fn logout_response(bhs: &[u8]) -> Option<u8> {
    let opcode = bhs.first()? & OPCODE_MASK;
    (opcode == OP_LOGOUT_RSP).then_some(*bhs.get(2)?)
}

/// What a Logout Response's code says (RFC 7143 11.15.1).
fn response_meaning(code: u8) -> &'static str {
    match code {
        0 => "connection or session closed successfully",
        1 => "CID not found",
        2 => "connection recovery is not supported",
        3 => "cleanup failed for various reasons",
        _ => "an unknown response",
    }
}

/// A netlink message to the kernel: the header, then `payload`.
fn frame(kind: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    // The request's type, in `nlmsg_type` too: the kernel reads it from there.
    msg.extend_from_slice(&(kind as u16).to_ne_bytes());
    msg.extend_from_slice(&[0u8; 10]);
    msg.extend_from_slice(payload);
    msg
}

/// The messages of one datagram from the kernel: `(nlmsg_type, payload)`. A truncated or
/// malformed message ends the list.
fn messages(datagram: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let Some(len) = u32_at(rest, 0).map(|l| l as usize) else {
            break;
        };
        let kind = rest
            .get(4..6)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_ne_bytes);
        let (Some(kind), Some(payload)) = (kind, rest.get(NLMSG_HDRLEN..len)) else {
            break;
        };
        out.push((kind, payload.to_vec()));
        // Messages start on 4-byte boundaries.
        let next = len.div_ceil(4) * 4;
        rest = rest.get(next..).unwrap_or_default();
    }
    out
}

/// The kernel's iSCSI netlink interface, or a script of it in the tests.
trait Kernel {
    /// Sends request `kind` (its uevent and what follows it).
    fn send(&mut self, kind: u32, payload: &[u8]) -> io::Result<()>;
    /// The next message from the kernel, `(nlmsg_type, payload)`, waiting until `until`
    /// at most: `None` once it has passed.
    fn receive(&mut self, until: Instant) -> io::Result<Option<(u16, Vec<u8>)>>;
}

/// A `NETLINK_ISCSI` socket in the iscsid multicast group.
struct Netlink {
    fd: OwnedFd,
    /// Messages of the last datagram not handed out yet.
    queued: VecDeque<(u16, Vec<u8>)>,
    buf: Vec<u8>,
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
        let context = |e: io::Error| with_context(e, "iscsi: opening the kernel's netlink socket");
        // SAFETY: plain socket(2); the descriptor is owned at once below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_ISCSI,
            )
        };
        if fd < 0 {
            return Err(context(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Port id 0: the kernel picks a free one (the worker's pid may be taken).
        let mut addr = sockaddr_nl();
        addr.nl_groups = 1 << (GROUP_ISCSID - 1);
        // SAFETY: `addr` is a valid sockaddr_nl, its size passed with it.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(context(io::Error::last_os_error()));
        }
        Ok(Netlink {
            fd,
            queued: VecDeque::new(),
            // Room for an event with a PDU and its data segment.
            buf: vec![0; 64 * 1024],
        })
    }
}

fn sockaddr_nl() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain integers, for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

impl Kernel for Netlink {
    fn send(&mut self, kind: u32, payload: &[u8]) -> io::Result<()> {
        let msg = frame(kind, payload);
        // To the kernel: port id 0, no group.
        let to = sockaddr_nl();
        // SAFETY: `msg` and `to` are valid for the lengths passed with them.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if sent as usize != msg.len() {
            return Err(io::Error::other("short send on the netlink socket"));
        }
        Ok(())
    }

    fn receive(&mut self, until: Instant) -> io::Result<Option<(u16, Vec<u8>)>> {
        loop {
            if let Some(m) = self.queued.pop_front() {
                return Ok(Some(m));
            }
            // Rounded up: a wait of less than a millisecond is not a busy loop.
            let left = until.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) if Instant::now() >= until => return Ok(None),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let mut from = sockaddr_nl();
            let mut from_len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are valid for the lengths passed with them.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    // Nothing yet, or events lost to a full socket buffer: the waits go
                    // on, and a lost answer shows as none.
                    Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ENOBUFS) => continue,
                    _ => return Err(e),
                }
            }
            let n = n as usize;
            // Only the kernel speaks here (port id 0); a message larger than the buffer
            // was cut short: neither is one of ours.
            if from.nl_pid != 0 || n > self.buf.len() {
                continue;
            }
            let datagram = self.buf.get(..n).unwrap_or_default();
            self.queued.extend(messages(datagram));
        }
    }
}

/// An event of the kernel about the session being logged out.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// A PDU from the target that the kernel leaves to user space, as a Logout Response.
    Pdu {
        bhs: Vec<u8>,
    },
    /// The connection failed, with the kernel's `enum iscsi_err` code (1020: the target
    /// closed it, as it does after a logout).
    ConnError {
        code: u32,
    },
    /// The session's SCSI devices are removed.
    Unbound,
    Other,
}

/// The event in a message of the kernel, if it is about session `sid`.
fn event_of(payload: &[u8], sid: u32) -> Option<Event> {
    let ev = Uevent::parse(payload)?;
    // `r.recv_req`, `r.connerror` and `r.unbind_session` all begin with the session.
    if ev.u32_at(R_AT) != sid {
        return None;
    }
    Some(match ev.kind() {
        ISCSI_KEVENT_RECV_PDU => Event::Pdu {
            bhs: payload
                .get(UEVENT_SIZE..UEVENT_SIZE + BHS_SIZE)
                .unwrap_or_default()
                .to_vec(),
        },
        ISCSI_KEVENT_CONN_ERROR => Event::ConnError {
            code: ev.u32_at(R_AT + 8),
        },
        ISCSI_KEVENT_UNBIND_SESSION => Event::Unbound,
        _ => Event::Other,
    })
}

/// The requests and events of one session's teardown.
struct Exchange<'k, K: Kernel> {
    kernel: &'k mut K,
    sid: u32,
    handle: u64,
    waits: Waits,
    /// The end of the whole teardown: no wait goes past it.
    until: Instant,
    /// Events met while waiting for an answer, for the waits after it.
    events: VecDeque<Event>,
}

impl<K: Kernel> Exchange<'_, K> {
    /// Sends `ev` (and `extra` after it) and returns the kernel's answer; an
    /// `ISCSI_KEVENT_IF_ERROR` answer, or a transport's error in `r.retcode`, is an error
    /// with its errno.
    fn request(&mut self, what: &str, ev: Uevent, extra: &[u8]) -> io::Result<Uevent> {
        let kind = ev.kind();
        let context = |e: io::Error| with_context(e, format!("iscsi: {what}"));
        let mut payload = ev.0.to_vec();
        payload.extend_from_slice(extra);
        self.kernel.send(kind, &payload).map_err(context)?;
        // The answer is queued by the time `send` returns: even past the teardown's end,
        // it is read.
        let until = self.until.min(Instant::now() + self.waits.reply);
        loop {
            let Some((nl_type, payload)) = self.kernel.receive(until).map_err(context)? else {
                return Err(context(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer from the kernel",
                )));
            };
            if u32::from(nl_type) != kind {
                self.events.extend(event_of(&payload, self.sid));
                continue;
            }
            let Some(answer) = Uevent::parse(&payload) else {
                return Err(context(io::Error::other("short answer from the kernel")));
            };
            let errno = if answer.kind() == ISCSI_KEVENT_IF_ERROR {
                answer.iferror()
            } else {
                answer.retcode()
            };
            return match errno {
                0 => Ok(answer),
                e => Err(context(errno_error(e))),
            };
        }
    }

    /// The next event about the session, until `until` at most.
    fn next_event(&mut self, until: Instant) -> io::Result<Option<Event>> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        loop {
            match self.kernel.receive(until)? {
                None => return Ok(None),
                // An event; another session's is not ours.
                Some((0, payload)) => {
                    if let Some(e) = event_of(&payload, self.sid) {
                        return Ok(Some(e));
                    }
                }
                // An answer to no request waiting for one.
                Some(_) => {}
            }
        }
    }

    /// Waits until `until` for the session's disks to be removed after UNBIND_SESSION:
    /// its event, or `target_state` UNBOUND in sysfs (no event comes for a session being
    /// unbound already). `Err(code)` when the connection failed meanwhile.
    fn wait_unbound(&mut self, sys: &Path, until: Instant) -> io::Result<Result<bool, u32>> {
        let state = sys.join(format!(
            "class/iscsi_session/session{}/target_state",
            self.sid
        ));
        loop {
            if std::fs::read_to_string(&state).is_ok_and(|s| s.trim() == "UNBOUND") {
                return Ok(Ok(true));
            }
            let now = Instant::now();
            if now >= until {
                return Ok(Ok(false));
            }
            // Short slices: sysfs is looked at again after each.
            let slice = until.min(now + Duration::from_millis(100));
            match self.next_event(slice)? {
                Some(Event::Unbound) => return Ok(Ok(true)),
                Some(Event::ConnError { code }) => return Ok(Err(code)),
                Some(_) | None => {}
            }
        }
    }

    /// Sends the Logout Request on connection `cid` and waits until `until` for the
    /// answer: `None` when the target closed the session, else why not.
    fn logout(&mut self, cid: u32, until: Instant) -> io::Result<Option<String>> {
        let started = Instant::now();
        let request = logout_request();
        let ev = Uevent::send_pdu(self.handle, self.sid, cid, BHS_SIZE as u32, 0);
        if let Err(e) = self.request("sending the logout request", ev, &request) {
            return Ok(Some(format!(
                "the kernel could not send the logout request ({e})"
            )));
        }
        let mut until = until;
        // A connection error for the session: its code.
        let mut failed = None;
        loop {
            let Some(event) = self.next_event(until)? else {
                return Ok(Some(match failed {
                    Some(code) => conn_failed(code),
                    None => format!(
                        "the target did not answer within {:.1}s",
                        started.elapsed().as_secs_f64()
                    ),
                }));
            };
            match event {
                Event::Pdu { bhs } => match logout_response(&bhs) {
                    Some(0) => return Ok(None),
                    Some(code) => {
                        return Ok(Some(format!(
                            "the target answered the logout with response {code} ({})",
                            response_meaning(code)
                        )))
                    }
                    // Another PDU (a NOP-In, an asynchronous message): not the answer.
                    None => {}
                },
                // The kernel hands on the answer before it sees the connection close (the
                // target closes it after answering): an answer can only be queued already,
                // so wait a moment for it, no more.
                Event::ConnError { code } => {
                    failed = Some(code);
                    until = until.min(Instant::now() + Duration::from_millis(250));
                }
                Event::Unbound | Event::Other => {}
            }
        }
    }
}

fn conn_failed(code: u32) -> String {
    format!("the connection failed before the target answered (kernel error {code})")
}

/// An error for a negative errno the kernel sent back.
fn errno_error(code: i32) -> io::Error {
    match code.checked_neg() {
        Some(e) if (1..4096).contains(&e) => io::Error::from_raw_os_error(e),
        _ => io::Error::other(format!("error {code}")),
    }
}

/// The teardown of session `s` over `kernel`: unbind and log out when the session is up,
/// then stop and destroy its connections and the session. `until` bounds it all.
fn run<K: Kernel>(
    kernel: &mut K,
    s: &Session,
    sys: &Path,
    until: Instant,
    waits: Waits,
    without_logout: Option<String>,
) -> io::Result<Closed> {
    let mut x = Exchange {
        kernel,
        sid: s.sid,
        handle: s.handle,
        waits,
        until,
        events: VecDeque::new(),
    };
    let sid = s.sid;
    // The waits for the disks' removal and the target's answer end in time for the
    // teardown: the part that ends the kernel's waiting for the target.
    let waits_end = until
        .checked_sub(waits.teardown)
        .unwrap_or_else(Instant::now);
    let dropped = if without_logout.is_some() {
        without_logout
    } else if !s.logged_in() {
        Some(format!(
            "its connection to the target had already failed (session state {})",
            s.state
        ))
    } else {
        let now = Instant::now();
        let half = now + waits_end.saturating_duration_since(now) / 2;
        let unbind_until = half.min(now + waits.unbind);
        let unbound = match x.request(
            &format!("unbinding session {sid}"),
            Uevent::for_session(ISCSI_UEVENT_UNBIND_SESSION, s.handle, sid),
            &[],
        ) {
            Ok(_) => x.wait_unbound(sys, unbind_until)?,
            // A kernel before 2.6.37 (no unbind): the session's destruction below
            // removes the disks, after the logout.
            Err(_) => Ok(false),
        };
        match (unbound, s.connections.first()) {
            (Err(code), _) => Some(format!(
                "the connection failed while the disks were being removed (kernel error \
                 {code})"
            )),
            // The transport's hardware logs out by itself when its connection stops.
            _ if s.caps & CAP_LOGIN_OFFLOAD != 0 => None,
            (Ok(_), Some(&cid)) => {
                let logout_until = waits_end.min(Instant::now() + waits.logout);
                x.logout(cid, logout_until)?
            }
            (Ok(_), None) => Some("the session has no connection left".to_string()),
        }
    };
    for &cid in &s.connections {
        let gone = || {
            !sys.join(format!("class/iscsi_connection/connection{sid}:{cid}"))
                .exists()
        };
        for ev in [
            Uevent::stop_conn(s.handle, sid, cid, STOP_CONN_TERM),
            Uevent::destroy_conn(s.handle, sid, cid),
        ] {
            let what = if ev.kind() == ISCSI_UEVENT_STOP_CONN {
                format!("stopping connection {sid}:{cid}")
            } else {
                format!("destroying connection {sid}:{cid}")
            };
            match x.request(&what, ev, &[]) {
                Ok(_) => {}
                // EINVAL: no such connection; fine when it is gone.
                Err(e) if errno(&e) == Some(libc::EINVAL) && gone() => {}
                Err(e) => return Err(e),
            }
        }
    }
    match x.request(
        &format!("destroying session {sid}"),
        Uevent::for_session(ISCSI_UEVENT_DESTROY_SESSION, s.handle, sid),
        &[],
    ) {
        Ok(_) => {}
        Err(e)
            if errno(&e) == Some(libc::EINVAL)
                && !sys
                    .join(format!("class/iscsi_session/session{sid}"))
                    .exists() => {}
        Err(e) => return Err(e),
    }
    Ok(match dropped {
        None => Closed::Done,
        Some(why) => Closed::Dropped(why),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// `struct iscsi_uevent` as `include/scsi/iscsi_if.h` of Linux 6.17 lays it out (the
    /// header is not a uapi one, so the host has none to compile against): the members
    /// used here, and the largest of each union, which make its size.
    mod header {
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub struct MsgDestroySession {
            pub sid: u32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub struct MsgDestroyConn {
            pub sid: u32,
            pub cid: u32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub struct MsgBindConn {
            pub sid: u32,
            pub cid: u32,
            pub transport_eph: u64,
            pub is_leading: u32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub struct MsgSendPdu {
            pub sid: u32,
            pub cid: u32,
            pub hdr_size: u32,
            pub data_size: u32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub struct MsgStopConn {
            pub sid: u32,
            pub cid: u32,
            pub conn_handle: u64,
            pub flag: u32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub struct MsgIscsiPing {
            pub host_no: u32,
            pub iface_num: u32,
            pub iface_type: u32,
            pub payload_size: u32,
            pub pid: u32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub union U {
            pub d_session: MsgDestroySession,
            pub b_conn: MsgBindConn,
            pub d_conn: MsgDestroyConn,
            pub send_pdu: MsgSendPdu,
            pub stop_conn: MsgStopConn,
            pub iscsi_ping: MsgIscsiPing,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub struct MsgRecvReq {
            pub sid: u32,
            pub cid: u32,
            pub recv_handle: u64,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub struct MsgConnError {
            pub sid: u32,
            pub cid: u32,
            pub error: u32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub struct MsgUnbindSession {
            pub sid: u32,
            pub host_no: u32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub struct MsgPingComp {
            pub host_no: u32,
            pub status: u32,
            pub pid: u32,
            pub data_size: u32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub union R {
            pub retcode: i32,
            pub recv_req: MsgRecvReq,
            pub connerror: MsgConnError,
            pub unbind_session: MsgUnbindSession,
            pub ping_comp: MsgPingComp,
        }
        #[repr(C, align(8))]
        #[derive(Clone, Copy)]
        pub struct IscsiUevent {
            pub kind: u32,
            pub iferror: u32,
            pub transport_handle: u64,
            pub u: U,
            pub r: R,
        }
    }

    #[test]
    fn the_uevent_layout_is_the_headers() {
        use header::*;
        use std::mem::{offset_of, size_of};
        // The header's values (Linux 6.17 include/scsi/iscsi_if.h), then this module's.
        assert_eq!(size_of::<IscsiUevent>(), 56);
        assert_eq!(offset_of!(IscsiUevent, iferror), 4);
        assert_eq!(offset_of!(IscsiUevent, transport_handle), 8);
        assert_eq!(offset_of!(IscsiUevent, u), 16);
        assert_eq!(offset_of!(IscsiUevent, r), 40);
        assert_eq!(size_of::<U>(), 24);
        assert_eq!(size_of::<R>(), 16);
        assert_eq!(UEVENT_SIZE, size_of::<IscsiUevent>());
        assert_eq!(TYPE_AT, offset_of!(IscsiUevent, kind));
        assert_eq!(IFERROR_AT, offset_of!(IscsiUevent, iferror));
        assert_eq!(HANDLE_AT, offset_of!(IscsiUevent, transport_handle));
        assert_eq!(U_AT, offset_of!(IscsiUevent, u));
        assert_eq!(R_AT, offset_of!(IscsiUevent, r));

        // The members written at U_AT + n and read at R_AT + n.
        assert_eq!(offset_of!(MsgDestroySession, sid), 0);
        assert_eq!(offset_of!(MsgDestroyConn, cid), 4);
        assert_eq!(offset_of!(MsgSendPdu, cid), 4);
        assert_eq!(offset_of!(MsgSendPdu, hdr_size), 8);
        assert_eq!(offset_of!(MsgSendPdu, data_size), 12);
        assert_eq!(offset_of!(MsgStopConn, cid), 4);
        assert_eq!(offset_of!(MsgStopConn, conn_handle), 8);
        assert_eq!(offset_of!(MsgStopConn, flag), 16);
        assert_eq!(offset_of!(MsgRecvReq, sid), 0);
        assert_eq!(offset_of!(MsgRecvReq, cid), 4);
        assert_eq!(offset_of!(MsgConnError, sid), 0);
        assert_eq!(offset_of!(MsgConnError, error), 8);
        assert_eq!(offset_of!(MsgUnbindSession, sid), 0);

        let ev = Uevent::stop_conn(0x1122_3344_5566_7788, 3, 1, STOP_CONN_TERM);
        assert_eq!(ev.kind(), 18);
        assert_eq!(ev.u32_at(U_AT), 3);
        assert_eq!(ev.u32_at(U_AT + 4), 1);
        assert_eq!(ev.u32_at(U_AT + 16), 1);
        assert_eq!(
            ev.0[HANDLE_AT..HANDLE_AT + 8],
            0x1122_3344_5566_7788u64.to_ne_bytes()
        );
        // The request numbers of enum iscsi_uevent_e and iscsi_if.h's other values.
        assert_eq!(
            [
                ISCSI_UEVENT_DESTROY_SESSION,
                ISCSI_UEVENT_DESTROY_CONN,
                ISCSI_UEVENT_STOP_CONN,
                ISCSI_UEVENT_SEND_PDU,
                ISCSI_UEVENT_UNBIND_SESSION,
            ],
            [10 + 2, 10 + 4, 10 + 8, 10 + 9, 10 + 17]
        );
        assert_eq!(
            [
                ISCSI_KEVENT_RECV_PDU,
                ISCSI_KEVENT_CONN_ERROR,
                ISCSI_KEVENT_IF_ERROR,
                ISCSI_KEVENT_UNBIND_SESSION,
            ],
            [100 + 1, 100 + 2, 100 + 3, 100 + 5]
        );
        assert_eq!(
            (GROUP_ISCSID, STOP_CONN_TERM, CAP_LOGIN_OFFLOAD),
            (1, 1, 0x4000)
        );
    }

    #[test]
    fn netlink_iscsi_matches_the_kernel_headers() {
        use super::super::devnode::abi_probe;
        abi_probe::check(&[
            ("NETLINK_ISCSI", NETLINK_ISCSI as u64),
            ("nlmsghdr.size", NLMSG_HDRLEN as u64),
            (
                "sockaddr_nl.size",
                std::mem::size_of::<libc::sockaddr_nl>() as u64,
            ),
        ]);
    }

    /// RFC 7143 11.14: byte 0 immediate bit and opcode 0x06, byte 1 final bit and the
    /// reason code, all else zero for the kernel to fill in (an ITT of zero, not the
    /// reserved 0xffffffff, which the kernel would leave alone).
    #[test]
    fn the_logout_request_header() {
        let bhs = logout_request();
        assert_eq!(bhs.len(), 48);
        assert_eq!(bhs[0], 0x46);
        assert_eq!(bhs[1], 0x80);
        assert!(bhs[2..].iter().all(|&b| b == 0), "{bhs:?}");
    }

    /// A Logout Response header: opcode 0x26, final, the response code in byte 2.
    fn response(code: u8) -> Vec<u8> {
        let mut bhs = vec![0u8; BHS_SIZE];
        bhs[0] = 0x26;
        bhs[1] = 0x80;
        bhs[2] = code;
        // Time2Wait, Time2Retain: the target's, of no concern here.
        bhs[40..44].copy_from_slice(&[0, 2, 0, 20]);
        bhs
    }

    #[test]
    fn logout_responses_are_read_from_the_header() {
        assert_eq!(logout_response(&response(0)), Some(0));
        assert_eq!(logout_response(&response(3)), Some(3));
        // The immediate bit does not change the opcode.
        let mut r = response(0);
        r[0] |= 0x40;
        assert_eq!(logout_response(&r), Some(0));
        // A NOP-In (0x20), or a header cut short, is not a Logout Response.
        let mut nop = response(0);
        nop[0] = 0x20;
        assert_eq!(logout_response(&nop), None);
        assert_eq!(logout_response(&[0x26, 0x80]), None);
        assert_eq!(logout_response(&[]), None);
        assert_eq!(response_meaning(3), "cleanup failed for various reasons");
    }

    #[test]
    fn netlink_messages_are_framed_and_split() {
        let msg = frame(ISCSI_UEVENT_SEND_PDU, &[7u8; 104]);
        assert_eq!(msg.len(), 16 + 104);
        assert_eq!(u32_at(&msg, 0), Some(120));
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), 19);
        assert!(msg[6..16].iter().all(|&b| b == 0));
        // Two messages in one datagram, the first padded to 4 bytes.
        let mut datagram = frame(7, &[1, 2, 3]);
        datagram.push(0);
        datagram.extend(frame(0, &[9; 8]));
        assert_eq!(
            messages(&datagram),
            vec![(7, vec![1, 2, 3]), (0, vec![9; 8])]
        );
        // A length past the end, or below the header's, ends the list.
        let mut bad = frame(5, &[1; 8]);
        bad[0] = 200;
        assert!(messages(&bad).is_empty());
        let mut short = frame(5, &[1; 8]);
        short[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(messages(&short).is_empty());
        assert!(messages(&[1, 2, 3]).is_empty());
    }

    const HANDLE: u64 = 18_446_744_072_103_390_144;

    /// A message of the kernel: `(nlmsg_type, payload)`.
    type Message = (u16, Vec<u8>);

    /// The kernel's answer to a request of `kind` that it carried out.
    fn answer(kind: u32) -> Message {
        (kind as u16, Uevent::request(kind, HANDLE).0.to_vec())
    }

    /// The kernel's answer to a request it refused, with `errno`.
    fn refused(kind: u32, errno: i32) -> Message {
        let mut ev = Uevent::request(ISCSI_KEVENT_IF_ERROR, HANDLE);
        ev.put_u32(IFERROR_AT, (-errno) as u32);
        (kind as u16, ev.0.to_vec())
    }

    /// A transport's error for a request the kernel passed on.
    fn failed(kind: u32, errno: i32) -> Message {
        let mut ev = Uevent::request(kind, HANDLE);
        ev.put_u32(R_AT, (-errno) as u32);
        (kind as u16, ev.0.to_vec())
    }

    fn event(kind: u32, sid: u32, more: &[(usize, u32)], after: &[u8]) -> Message {
        let mut ev = Uevent::request(kind, HANDLE);
        ev.put_u32(R_AT, sid);
        for &(at, v) in more {
            ev.put_u32(at, v);
        }
        let mut payload = ev.0.to_vec();
        payload.extend_from_slice(after);
        (0, payload)
    }

    fn unbound(sid: u32) -> Message {
        event(ISCSI_KEVENT_UNBIND_SESSION, sid, &[(R_AT + 4, 4)], &[])
    }

    fn received(sid: u32, bhs: &[u8]) -> Message {
        event(ISCSI_KEVENT_RECV_PDU, sid, &[], bhs)
    }

    fn conn_error(sid: u32, code: u32) -> Message {
        event(ISCSI_KEVENT_CONN_ERROR, sid, &[(R_AT + 8, code)], &[])
    }

    /// The kernel as a script: what it sends after each request of a kind (answers and
    /// events, one list per request, in order); a request with nothing scripted is
    /// carried out. Waiting for nothing takes the time asked for.
    #[derive(Default)]
    struct Script {
        after: BTreeMap<u32, VecDeque<Vec<Message>>>,
        inbox: VecDeque<Message>,
        sent: Vec<(u32, Vec<u8>)>,
    }

    impl Script {
        fn on(mut self, kind: u32, messages: Vec<Message>) -> Script {
            self.after.entry(kind).or_default().push_back(messages);
            self
        }

        fn kinds(&self) -> Vec<u32> {
            self.sent.iter().map(|(k, _)| *k).collect()
        }
    }

    impl Kernel for Script {
        fn send(&mut self, kind: u32, payload: &[u8]) -> io::Result<()> {
            self.sent.push((kind, payload.to_vec()));
            match self.after.get_mut(&kind).and_then(|q| q.pop_front()) {
                Some(messages) => self.inbox.extend(messages),
                None => self.inbox.push_back(answer(kind)),
            }
            Ok(())
        }

        fn receive(&mut self, until: Instant) -> io::Result<Option<Message>> {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(Some(m));
            }
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            Ok(None)
        }
    }

    const QUICK: Waits = Waits {
        reply: Duration::from_millis(100),
        unbind: Duration::from_millis(300),
        logout: Duration::from_millis(300),
        teardown: Duration::ZERO,
        margin: Duration::ZERO,
    };

    fn session(state: &str) -> Session {
        Session {
            sid: 1,
            state: state.into(),
            handle: HANDLE,
            caps: 0x39,
            connections: vec![0],
        }
    }

    fn run_script(script: &mut Script, s: &Session) -> io::Result<Closed> {
        let until = Instant::now() + Duration::from_secs(5);
        run(script, s, Path::new("/nonexistent"), until, QUICK, None)
    }

    const TEARDOWN: [u32; 3] = [
        ISCSI_UEVENT_STOP_CONN,
        ISCSI_UEVENT_DESTROY_CONN,
        ISCSI_UEVENT_DESTROY_SESSION,
    ];

    #[test]
    fn a_target_that_answers_is_logged_out_then_the_session_destroyed() {
        let mut script = Script::default()
            .on(
                ISCSI_UEVENT_UNBIND_SESSION,
                vec![answer(ISCSI_UEVENT_UNBIND_SESSION), unbound(1)],
            )
            .on(
                ISCSI_UEVENT_SEND_PDU,
                vec![
                    answer(ISCSI_UEVENT_SEND_PDU),
                    received(1, &response(0)),
                    // The target closes the connection after its answer: expected.
                    conn_error(1, 1020),
                ],
            );
        let closed = run_script(&mut script, &session("LOGGED_IN")).unwrap();
        assert_eq!(closed, Closed::Done);
        assert_eq!(
            script.kinds(),
            [
                vec![ISCSI_UEVENT_UNBIND_SESSION, ISCSI_UEVENT_SEND_PDU],
                TEARDOWN.to_vec()
            ]
            .concat()
        );
        // UNBIND_SESSION names the session; SEND_PDU carries the header after the uevent.
        let unbind = Uevent::parse(&script.sent[0].1).unwrap();
        assert_eq!(unbind.u32_at(U_AT), 1);
        assert_eq!(unbind.0[HANDLE_AT..HANDLE_AT + 8], HANDLE.to_ne_bytes());
        let (_, pdu) = &script.sent[1];
        assert_eq!(pdu.len(), UEVENT_SIZE + BHS_SIZE);
        let ev = Uevent::parse(pdu).unwrap();
        assert_eq!(
            [
                ev.u32_at(U_AT),
                ev.u32_at(U_AT + 4),
                ev.u32_at(U_AT + 8),
                ev.u32_at(U_AT + 12)
            ],
            [1, 0, 48, 0]
        );
        assert_eq!(pdu[UEVENT_SIZE..], logout_request());
        let stop = Uevent::parse(&script.sent[2].1).unwrap();
        assert_eq!(stop.u32_at(U_AT + 16), STOP_CONN_TERM);
    }

    #[test]
    fn a_target_that_does_not_answer_is_dropped_and_the_session_still_destroyed() {
        let mut script = Script::default().on(
            ISCSI_UEVENT_UNBIND_SESSION,
            vec![answer(ISCSI_UEVENT_UNBIND_SESSION), unbound(1)],
        );
        let started = Instant::now();
        let closed = run_script(&mut script, &session("LOGGED_IN")).unwrap();
        let Closed::Dropped(why) = closed else {
            panic!("{closed:?}")
        };
        assert!(
            why.starts_with("the target did not answer within 0."),
            "{why}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(script.kinds().ends_with(&TEARDOWN), "{:?}", script.kinds());
    }

    #[test]
    fn a_failed_session_skips_the_unbind_and_the_logout() {
        let mut script = Script::default();
        let closed = run_script(&mut script, &session("FAILED")).unwrap();
        assert_eq!(
            closed,
            Closed::Dropped(
                "its connection to the target had already failed (session state FAILED)".into()
            )
        );
        assert_eq!(script.kinds(), TEARDOWN);
    }

    /// The end of a shutdown whose last sync timed out: a session still logged in is
    /// ended without the unbind (its disks' cache flush would wait on the target) and
    /// without the logout, with the reason given.
    #[test]
    fn a_session_dropped_at_the_end_skips_the_unbind_and_the_logout() {
        let mut script = Script::default();
        let until = Instant::now() + Duration::from_secs(5);
        let why = "writes to it still wait after the last sync";
        let closed = run(
            &mut script,
            &session("LOGGED_IN"),
            Path::new("/nonexistent"),
            until,
            QUICK,
            Some(why.into()),
        )
        .unwrap();
        assert_eq!(closed, Closed::Dropped(why.into()));
        assert_eq!(script.kinds(), TEARDOWN);
    }

    #[test]
    fn a_refused_logout_is_dropped_with_the_targets_response() {
        let mut script = Script::default().on(
            ISCSI_UEVENT_SEND_PDU,
            vec![answer(ISCSI_UEVENT_SEND_PDU), received(1, &response(3))],
        );
        let closed = run_script(&mut script, &session("LOGGED_IN")).unwrap();
        assert_eq!(
            closed,
            Closed::Dropped(
                "the target answered the logout with response 3 (cleanup failed for various \
                 reasons)"
                    .into()
            )
        );
        assert!(script.kinds().ends_with(&TEARDOWN));
    }

    #[test]
    fn a_connection_that_fails_before_the_answer_is_dropped_at_once() {
        let mut script = Script::default().on(
            ISCSI_UEVENT_SEND_PDU,
            vec![answer(ISCSI_UEVENT_SEND_PDU), conn_error(1, 1011)],
        );
        let closed = run_script(&mut script, &session("LOGGED_IN")).unwrap();
        assert_eq!(
            closed,
            Closed::Dropped(
                "the connection failed before the target answered (kernel error 1011)".into()
            )
        );
    }

    /// Events of other sessions are not ours; an event of ours met while waiting for an
    /// answer is kept for the wait after it.
    #[test]
    fn only_the_sessions_own_events_count_and_none_is_lost() {
        let mut script = Script::default()
            .on(
                ISCSI_UEVENT_UNBIND_SESSION,
                vec![unbound(2), unbound(1), answer(ISCSI_UEVENT_UNBIND_SESSION)],
            )
            .on(
                ISCSI_UEVENT_SEND_PDU,
                vec![
                    received(2, &response(0)),
                    received(1, &response(0)),
                    answer(ISCSI_UEVENT_SEND_PDU),
                ],
            );
        let closed = run_script(&mut script, &session("LOGGED_IN")).unwrap();
        assert_eq!(closed, Closed::Done);

        let mut script = Script::default().on(
            ISCSI_UEVENT_SEND_PDU,
            vec![answer(ISCSI_UEVENT_SEND_PDU), received(2, &response(0))],
        );
        let closed = run_script(&mut script, &session("LOGGED_IN")).unwrap();
        assert!(matches!(closed, Closed::Dropped(_)), "{closed:?}");
    }

    /// A kernel without UNBIND_SESSION (before 2.6.37) refuses it: the logout goes on, as
    /// iscsid's does.
    #[test]
    fn a_kernel_without_unbind_still_logs_out() {
        let mut script = Script::default()
            .on(
                ISCSI_UEVENT_UNBIND_SESSION,
                vec![refused(ISCSI_UEVENT_UNBIND_SESSION, libc::ENOSYS)],
            )
            .on(
                ISCSI_UEVENT_SEND_PDU,
                vec![answer(ISCSI_UEVENT_SEND_PDU), received(1, &response(0))],
            );
        let closed = run_script(&mut script, &session("LOGGED_IN")).unwrap();
        assert_eq!(closed, Closed::Done);
        assert_eq!(script.kinds()[1], ISCSI_UEVENT_SEND_PDU);
    }

    #[test]
    fn a_logout_the_kernel_cannot_send_is_dropped_and_the_session_destroyed() {
        let mut script = Script::default().on(
            ISCSI_UEVENT_SEND_PDU,
            vec![failed(ISCSI_UEVENT_SEND_PDU, libc::EPERM)],
        );
        let closed = run_script(&mut script, &session("LOGGED_IN")).unwrap();
        let Closed::Dropped(why) = closed else {
            panic!("{closed:?}")
        };
        assert!(
            why.starts_with("the kernel could not send the logout request (iscsi: sending"),
            "{why}"
        );
        assert!(script.kinds().ends_with(&TEARDOWN));
    }

    /// Hardware that logs in by itself logs out by itself when its connection stops.
    #[test]
    fn an_offloading_transport_gets_no_logout_request() {
        let mut script = Script::default();
        let mut s = session("LOGGED_IN");
        s.caps |= CAP_LOGIN_OFFLOAD;
        let closed = run_script(&mut script, &s).unwrap();
        assert_eq!(closed, Closed::Done);
        assert!(!script.kinds().contains(&ISCSI_UEVENT_SEND_PDU));
    }

    #[test]
    fn a_session_the_kernel_will_not_destroy_is_an_error_naming_it() {
        let mut script = Script::default().on(
            ISCSI_UEVENT_DESTROY_SESSION,
            vec![refused(ISCSI_UEVENT_DESTROY_SESSION, libc::EBUSY)],
        );
        let err = run_script(&mut script, &session("FAILED")).unwrap_err();
        assert_eq!(errno(&err), Some(libc::EBUSY));
        assert!(
            err.to_string().starts_with("iscsi: destroying session 1: "),
            "{err}"
        );
        // No answer at all is an error too, not a wait without end.
        let mut silent = Script::default().on(ISCSI_UEVENT_STOP_CONN, Vec::new());
        let err = run_script(&mut silent, &session("FAILED")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("stopping connection 1:0"), "{err}");
    }

    /// The real kernel's answer to a request naming no transport: EINVAL, through
    /// `ISCSI_KEVENT_IF_ERROR`. Checks the socket, the framing and the reading of answers.
    #[test]
    #[ignore = "needs root and the scsi_transport_iscsi module (modprobe iscsi_tcp)"]
    fn the_kernel_refuses_a_request_for_no_transport() {
        let mut kernel = Netlink::open().unwrap();
        let mut x = Exchange {
            kernel: &mut kernel,
            sid: 999,
            handle: 0,
            waits: WAITS,
            until: Instant::now() + Duration::from_secs(2),
            events: VecDeque::new(),
        };
        let ev = Uevent::for_session(ISCSI_UEVENT_DESTROY_SESSION, 0, 999);
        let err = x.request("destroying session 999", ev, &[]).unwrap_err();
        assert_eq!(errno(&err), Some(libc::EINVAL), "{err}");
    }

    use crate::fixture::tree;

    const LUN: &str = "sys/devices/platform/host2/session1/target2:0:0/2:0:0:0/block/sda";

    /// A Debian root on LVM on an iSCSI disk's partition, as sysfs and procfs show it
    /// inside the exitrd once `mountinfo` is what it is.
    fn iscsi_root(tag: &str, mountinfo: &str, more: &[(&str, &str)]) -> PathBuf {
        let session = "sys/devices/platform/host2/session1/iscsi_session/session1";
        let mut files: Vec<(String, String)> = vec![
            ("proc/self/mountinfo".into(), mountinfo.into()),
            (
                "sys/class/block/sda".into(),
                format!("->../../{}", &LUN[4..]),
            ),
            (
                "sys/class/block/sda1".into(),
                format!("->../../{}/sda1", &LUN[4..]),
            ),
            (format!("{LUN}/dev"), "8:0\n".into()),
            (format!("{LUN}/sda1/dev"), "8:1\n".into()),
            (format!("{LUN}/sda1/partition"), "1\n".into()),
            (
                "sys/class/iscsi_session/session1".into(),
                format!("->../../{}", &session[4..]),
            ),
            (format!("{session}/state"), "LOGGED_IN\n".into()),
            (format!("{session}/target_state"), "SCANNED\n".into()),
            (
                format!("{session}/targetname"),
                "iqn.2026-01.test:root\n".into(),
            ),
            (
                "sys/class/scsi_host/host2/proc_name".into(),
                "iscsi_tcp\n".into(),
            ),
            (
                "sys/class/iscsi_transport/tcp/handle".into(),
                format!("{HANDLE}\n"),
            ),
            ("sys/class/iscsi_transport/tcp/caps".into(), "0x39\n".into()),
            (
                "sys/class/iscsi_connection/connection1:0/persistent_address".into(),
                "10.0.2.2\n".into(),
            ),
            (
                "sys/class/iscsi_connection/connection1:0/persistent_port".into(),
                "3260\n".into(),
            ),
        ];
        files.extend(more.iter().map(|(a, b)| (a.to_string(), b.to_string())));
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        tree(tag, &files)
    }

    #[test]
    fn the_session_is_read_from_sysfs() {
        let root = iscsi_root("session", "", &[]);
        let s = Session::read(&root.join("sys"), 1).unwrap().unwrap();
        assert_eq!(
            s,
            Session {
                sid: 1,
                state: "LOGGED_IN".into(),
                handle: HANDLE,
                caps: 0x39,
                connections: vec![0],
            }
        );
        assert!(s.logged_in());
        assert_eq!(Session::read(&root.join("sys"), 2).unwrap(), None);
        // A transport that is not loaded: the error names the file.
        std::fs::remove_dir_all(root.join("sys/class/iscsi_transport/tcp")).unwrap();
        let err = Session::read(&root.join("sys"), 1).unwrap_err();
        assert!(
            err.to_string()
                .contains("sys/class/iscsi_transport/tcp/handle"),
            "{err}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// The teardown refuses, naming the disk, while a file system, a device or a swap
    /// area is still on it; the plan of that tree logs out last.
    #[test]
    fn a_disk_still_in_use_is_named_and_nothing_is_touched() {
        let root_on_lv = "1 0 0:30 / / rw - tmpfs tmpfs rw\n\
                          40 1 252:0 / /oldroot rw - ext4 /dev/mapper/vg0-root rw\n";
        let root = iscsi_root(
            "in-use",
            root_on_lv,
            &[
                ("sys/class/block/dm-0/dev", "252:0\n"),
                ("sys/class/block/dm-0/dm/name", "vg0-root\n"),
                ("sys/class/block/dm-0/dm/uuid", "LVM-xyz\n"),
                ("sys/class/block/dm-0/slaves/sda1", ""),
                (&format!("{LUN}/sda1/holders/dm-0"), ""),
            ],
        );
        let disks = [("sda".to_string(), (8, 0))];
        let err = logout(&root, 1, &disks, Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "iscsi: sda is still in use (sda1 is held by vg0-root): session 1 not logged out"
        );
        // The plan of the same tree: unmount, remove the volume, then log out.
        let topo = Topology::read(&root).unwrap();
        let steps: Vec<String> = crate::plan::plan(&topo, &crate::plan::PlanOptions::shutdown())
            .steps
            .iter()
            .map(|s| s.describe())
            .collect();
        assert_eq!(
            steps,
            vec![
                "unmount /oldroot (ext4 on /dev/mapper/vg0-root)",
                "remove LVM volume vg0-root (dm-0)",
                "log out of iSCSI session 1 (iqn.2026-01.test:root on 10.0.2.2:3260) and \
                 remove its disk sda",
            ]
        );
        std::fs::remove_dir_all(&root).unwrap();

        // /boot on the disk's partition, and a swap area on the disk itself.
        let root = iscsi_root(
            "mounted",
            "1 0 0:30 / / rw - tmpfs tmpfs rw\n41 1 8:1 / /oldroot/boot rw - ext4 /dev/sda1 rw\n",
            &[],
        );
        let err = logout(&root, 1, &disks, Duration::from_secs(1)).unwrap_err();
        assert!(
            err.to_string()
                .contains("sda is still in use (sda1 is mounted on /oldroot/boot)"),
            "{err}"
        );
        std::fs::remove_dir_all(&root).unwrap();
        let root = iscsi_root(
            "swap",
            "1 0 0:30 / / rw - tmpfs tmpfs rw\n",
            &[(
                "proc/swaps",
                "Filename Type Size Used Priority\n/dev/sda partition 1048572 0 -2\n",
            )],
        );
        let err = logout(&root, 1, &disks, Duration::from_secs(1)).unwrap_err();
        assert!(
            err.to_string().contains("sda is a swap area in use"),
            "{err}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_session_already_gone_is_gone_and_a_running_iscsid_is_waited_for() {
        let root = tree(
            "gone",
            &[("proc/self/mountinfo", "1 0 0:30 / / rw - tmpfs tmpfs rw\n")],
        );
        let disks = [("sda".to_string(), (8, 0))];
        assert_eq!(
            logout(&root, 1, &disks, Duration::from_secs(1)).unwrap(),
            Closed::Gone
        );
        std::fs::remove_dir_all(&root).unwrap();
        // An iscsid (a process with an executable) would take the kernel's events.
        let root = iscsi_root(
            "iscsid",
            "1 0 0:30 / / rw - tmpfs tmpfs rw\n",
            &[
                ("proc/4242/comm", "iscsid\n"),
                ("proc/4242/exe", "->/usr/sbin/iscsid"),
            ],
        );
        let err = logout(&root, 1, &disks, Duration::from_secs(1)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("iscsi: iscsid (pid 4242) is still running"),
            "{err}"
        );
        // A kernel thread of that name has no executable.
        std::fs::remove_file(root.join("proc/4242/exe")).unwrap();
        assert_eq!(iscsid_running(&root.join("proc")), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
