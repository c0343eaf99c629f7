//! Device-mapper control interface (`/dev/mapper/control`).
//!
//! Written from `<linux/dm-ioctl.h>`, interface version 4. Every request is
//! one buffer that starts with `struct dm_ioctl` (`DmIoctl`); commands
//! that carry a payload (`DM_TARGET_MSG`) put it at `data_start` bytes from
//! the start of the buffer, and `data_size` covers header plus payload;
//! `DM_TABLE_STATUS` answers the same way, its `data_size` then being the
//! room we offer. Devices are addressed by name (the uuid field stays empty:
//! the kernel refuses requests that give both) or, for removal, by number.
//!
//! The kernel copies the header back on return; [`suspend`] checks that the
//! returned `DM_SUSPEND_FLAG` agrees with what was asked.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::libc;
use nix::sys::ioctl::ioctl_num_type;
use nix::sys::stat::{self, Mode, SFlag};

use super::devnode::{errno, flush, node_for, with_context};
use super::Closed;

/// `DM_NAME_LEN`: size of the name field, including the terminating NUL.
const DM_NAME_LEN: usize = 128;
/// `DM_UUID_LEN`: size of the uuid field, including the terminating NUL.
const DM_UUID_LEN: usize = 129;
/// `DM_IOCTL`: the ioctl type byte of device-mapper.
const DM_IOCTL: u8 = 0xfd;
/// We speak interface 4.0.0: the kernel accepts any 4.x with x <= its own.
const DM_VERSION: [u32; 3] = [4, 0, 0];

// Positions in the header's command enum.
const DM_DEV_REMOVE_CMD: u8 = 4;
const DM_DEV_SUSPEND_CMD: u8 = 6;
const DM_DEV_STATUS_CMD: u8 = 7;
const DM_TABLE_STATUS_CMD: u8 = 12;
const DM_TARGET_MSG_CMD: u8 = 14;

/// `DM_DEV_REMOVE`: `_IOWR(DM_IOCTL, DM_DEV_REMOVE_CMD, struct dm_ioctl)`.
const DM_DEV_REMOVE: ioctl_num_type =
    nix::request_code_readwrite!(DM_IOCTL, DM_DEV_REMOVE_CMD, size_of::<DmIoctl>());
/// `DM_DEV_SUSPEND`: suspend or resume, depending on `DM_SUSPEND_FLAG`.
const DM_DEV_SUSPEND: ioctl_num_type =
    nix::request_code_readwrite!(DM_IOCTL, DM_DEV_SUSPEND_CMD, size_of::<DmIoctl>());
/// `DM_DEV_STATUS`: fills in the header fields for a device.
const DM_DEV_STATUS: ioctl_num_type =
    nix::request_code_readwrite!(DM_IOCTL, DM_DEV_STATUS_CMD, size_of::<DmIoctl>());
/// `DM_TABLE_STATUS`: the active table's targets, with their status or table lines.
const DM_TABLE_STATUS: ioctl_num_type =
    nix::request_code_readwrite!(DM_IOCTL, DM_TABLE_STATUS_CMD, size_of::<DmIoctl>());
/// `DM_TARGET_MSG`: passes a `struct dm_target_msg` to a target.
const DM_TARGET_MSG: ioctl_num_type =
    nix::request_code_readwrite!(DM_IOCTL, DM_TARGET_MSG_CMD, size_of::<DmIoctl>());

/// In/out: device is (to be) suspended.
const DM_SUSPEND_FLAG: u32 = 1 << 1;
/// In: suspend without flushing queued I/O.
const DM_NOFLUSH_FLAG: u32 = 1 << 11;
/// In (`DM_TABLE_STATUS`): return the table lines instead of the status lines.
const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
/// Out: the result did not fit the buffer.
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;
/// `DM_MAX_TYPE_NAME`: size of a target type name, including the NUL.
const DM_MAX_TYPE_NAME: usize = 16;
/// In: the kernel wipes its copies of the buffer after use (key material).
const DM_SECURE_DATA_FLAG: u32 = 1 << 15;

const CONTROL_DIR: &str = "/dev/mapper";
const CONTROL_PATH: &str = "/dev/mapper/control";
/// `MISC_MAJOR` from `<linux/major.h>`.
const MISC_MAJOR: u64 = 10;
/// The fixed misc minor of the device-mapper control device.
const MAPPER_CTRL_MINOR: u64 = 236;

/// `struct dm_ioctl`, field for field (`char` arrays as `u8`).
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

const _: () = assert!(size_of::<DmIoctl>() == 312);

/// `struct dm_target_spec`: one target of a table, followed by its NUL-terminated line.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    /// Out (`DM_TABLE_STATUS`): offset of the next spec from the first one.
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}

const SPEC_SIZE: usize = size_of::<DmTargetSpec>();
const _: () = assert!(SPEC_SIZE == 40);

/// Size of the header, which is also where our payload starts.
const HEADER_SIZE: u32 = size_of::<DmIoctl>() as u32;
/// `sizeof(struct dm_target_msg)`: the `__u64 sector` before the message.
const TARGET_MSG_HEADER: usize = size_of::<u64>();
/// Room after the header; the whole request is one 4 KiB page.
const DATA_CAPACITY: usize = 4096 - size_of::<DmIoctl>();
/// Longest message [`message`] accepts (room for the sector and the NUL).
const MAX_MESSAGE_LEN: usize = DATA_CAPACITY - TARGET_MSG_HEADER - 1;

impl DmIoctl {
    const fn zeroed() -> Self {
        DmIoctl {
            version: [0; 3],
            data_size: 0,
            data_start: 0,
            target_count: 0,
            open_count: 0,
            flags: 0,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: [0; DM_NAME_LEN],
            uuid: [0; DM_UUID_LEN],
            data: [0; 7],
        }
    }
}

/// A complete ioctl buffer: header followed by the payload area.
#[repr(C)]
struct DmRequest {
    hdr: DmIoctl,
    data: [u8; DATA_CAPACITY],
}

const _: () = assert!(size_of::<DmRequest>() == 4096);

impl DmRequest {
    /// A header-only request naming no device yet.
    fn header_only() -> Self {
        let mut req = DmRequest {
            hdr: DmIoctl::zeroed(),
            data: [0; DATA_CAPACITY],
        };
        req.hdr.version = DM_VERSION;
        req.hdr.data_size = HEADER_SIZE;
        req.hdr.data_start = HEADER_SIZE;
        req
    }

    /// A header-only request for device `name`.
    fn new(name: &str) -> io::Result<Self> {
        let mut req = DmRequest::header_only();
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("device-mapper: invalid device name {name:?}"),
            ));
        }
        if bytes.len() >= DM_NAME_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "device-mapper: device name '{name}' is {} bytes long, the limit is {}",
                    bytes.len(),
                    DM_NAME_LEN - 1
                ),
            ));
        }
        req.hdr.name[..bytes.len()].copy_from_slice(bytes);
        Ok(req)
    }

    /// A header-only request for the device numbered `major:minor`: no name and no
    /// uuid, so the kernel looks the device up by `dev`.
    fn for_dev(major: u32, minor: u32) -> Self {
        let mut req = DmRequest::header_only();
        req.hdr.dev = encode_dev(major, minor);
        req
    }

    /// A `DM_TARGET_MSG` request: `struct dm_target_msg { sector, message }`
    /// at `data_start`, the message NUL-terminated.
    fn target_msg(name: &str, sector: u64, msg: &str) -> io::Result<Self> {
        let mut req = DmRequest::new(name)?;
        let text = msg.as_bytes();
        if text.is_empty() || text.contains(&0) || text.len() > MAX_MESSAGE_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "device-mapper: invalid message for '{name}' \
                     (must be 1..={MAX_MESSAGE_LEN} bytes without NUL)"
                ),
            ));
        }
        let end = TARGET_MSG_HEADER + text.len();
        req.data[..TARGET_MSG_HEADER].copy_from_slice(&sector.to_ne_bytes());
        req.data[TARGET_MSG_HEADER..end].copy_from_slice(text);
        req.data[end] = 0;
        // `end + 1 <= DATA_CAPACITY`, so this fits the u32 and the buffer.
        req.hdr.data_size = HEADER_SIZE + (end + 1) as u32;
        req.hdr.flags = DM_SECURE_DATA_FLAG;
        Ok(req)
    }
}

/// The kernel's 64-bit device number encoding (`huge_encode_dev`: minor bits 0-7, major
/// bits 8-19, minor bits 8-19 at 20-31).
fn encode_dev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Opens `/dev/mapper/control`, creating the directory and the character
/// node (10:236, mode 0600) first when it does not exist.
fn control() -> io::Result<File> {
    match open_control(Path::new(CONTROL_PATH)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => return other.map_err(|e| with_context(e, format!("opening {CONTROL_PATH}"))),
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(CONTROL_DIR)
        .map_err(|e| with_context(e, format!("creating {CONTROL_DIR}")))?;
    match stat::mknod(
        CONTROL_PATH,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        stat::makedev(MISC_MAJOR, MAPPER_CTRL_MINOR),
    ) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(with_context(e.into(), format!("creating {CONTROL_PATH}"))),
    }
    open_control(Path::new(CONTROL_PATH))
        .map_err(|e| with_context(e, format!("opening {CONTROL_PATH}")))
}

fn open_control(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Issues one device-mapper ioctl with `req` as argument.
fn dm_ioctl(control: &File, request: ioctl_num_type, req: &mut DmRequest) -> io::Result<()> {
    if req.hdr.data_size < HEADER_SIZE || req.hdr.data_size as usize > size_of::<DmRequest>() {
        return Err(Errno::EINVAL.into());
    }
    let arg: *mut DmRequest = req;
    // SAFETY: `request` is one of the `_IOWR(DM_IOCTL, .., struct dm_ioctl)`
    // codes above, whose argument is a pointer to a buffer that starts with a
    // `struct dm_ioctl` (`DmRequest` is `repr(C)` with `DmIoctl` first, layout
    // checked against the headers in the tests) and is `data_size` bytes long.
    // `arg` comes from an exclusive borrow of a fully initialised DmRequest, and
    // `data_size` was checked above not to exceed its size, so the kernel reads
    // and writes only inside it. The borrow outlives the call; nothing is
    // retained by the kernel after it returns.
    let ret = unsafe { libc::ioctl(control.as_raw_fd(), request, arg) };
    Errno::result(ret).map(drop).map_err(io::Error::from)
}

/// Opens the control device and issues `request`; errors are prefixed with
/// `what` (which names the device).
fn call(request: ioctl_num_type, req: &mut DmRequest, what: &str) -> io::Result<()> {
    let control = control().map_err(|e| with_context(e, what))?;
    dm_ioctl(&control, request, req).map_err(|e| with_context(e, what))
}

/// Removes the device-mapper device `name` (`DM_DEV_REMOVE`).
///
/// Fails with `EBUSY` while the device is open and `ENXIO` when no such
/// device exists (see [`super::devnode::errno`]).
fn remove(name: &str) -> io::Result<()> {
    let mut req = DmRequest::new(name)?;
    call(
        DM_DEV_REMOVE,
        &mut req,
        &format!("device-mapper: removing '{name}'"),
    )
}

/// Removes the device-mapper device numbered `major:minor` (`DM_DEV_REMOVE` looked up
/// by device number), for a device whose name could not be read. Errors as [`remove`].
fn remove_by_dev(major: u32, minor: u32) -> io::Result<()> {
    let mut req = DmRequest::for_dev(major, minor);
    call(
        DM_DEV_REMOVE,
        &mut req,
        &format!("device-mapper: removing device {major}:{minor}"),
    )
}

/// Suspends `name` (`DM_DEV_SUSPEND` with `DM_SUSPEND_FLAG`).
///
/// With `flush` the kernel waits for queued I/O to complete; without it
/// (`DM_NOFLUSH_FLAG`) queued I/O stays queued. Succeeds only if the kernel
/// reports the device suspended afterwards.
pub fn suspend(name: &str, flush: bool) -> io::Result<()> {
    let mut req = DmRequest::new(name)?;
    req.hdr.flags = DM_SUSPEND_FLAG;
    if !flush {
        req.hdr.flags |= DM_NOFLUSH_FLAG;
    }
    let what = format!("device-mapper: suspending '{name}'");
    call(DM_DEV_SUSPEND, &mut req, &what)?;
    if req.hdr.flags & DM_SUSPEND_FLAG == 0 {
        return Err(io::Error::other(format!(
            "{what}: the kernel reports the device as not suspended"
        )));
    }
    Ok(())
}

/// Sends `msg` to the target of `name` that covers `sector`
/// (`DM_TARGET_MSG`), e.g. `message("cryptroot", 0, "key wipe")`.
///
/// The request carries `DM_SECURE_DATA_FLAG` so the kernel wipes its copy,
/// and our buffer is zeroed afterwards. Any output of the target is ignored.
/// `msg` must be 1 to [`MAX_MESSAGE_LEN`] bytes without NUL.
fn message(name: &str, sector: u64, msg: &str) -> io::Result<()> {
    let mut req = DmRequest::target_msg(name, sector, msg)?;
    let result = call(
        DM_TARGET_MSG,
        &mut req,
        &format!("device-mapper: sending message to '{name}' at sector {sector}"),
    );
    req.data.fill(0);
    std::hint::black_box(&req);
    result
}

/// Asks for the status of `name` (`DM_DEV_STATUS`), which fails with `ENXIO` when there
/// is no such device.
fn status(name: &str) -> io::Result<()> {
    let mut req = DmRequest::new(name)?;
    call(
        DM_DEV_STATUS,
        &mut req,
        &format!("device-mapper: querying status of '{name}'"),
    )
}

/// One target of a device's active table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// First sector it covers: where a message for it must be addressed.
    pub start: u64,
    /// `crypt`, `linear`, `striped`, `thin-pool`, ...
    pub target_type: String,
}

/// What became of the keys of a device's dm-crypt targets after "key wipe".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WipeReport {
    /// dm-crypt targets in the table: 0 for a device that holds no dm-crypt key.
    pub crypt_targets: usize,
    /// Of those, the ones whose table line no longer carries a key.
    pub wiped: usize,
}

/// What a dm-crypt table line (`cipher key iv_offset device offset [options]`) says of its
/// key: after "key wipe" the kernel prints the zeroed key as zeros, `-` means no key.
fn crypt_line_holds_key(line: &[u8]) -> bool {
    let key = line
        .split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty())
        .nth(1);
    match key {
        None | Some(b"-") => false,
        Some(k) => !k.iter().all(|&b| b == b'0'),
    }
}

/// Splits `DM_TABLE_STATUS` output (`out`: the bytes from `data_start` on) into `count`
/// targets: a `struct dm_target_spec` each, followed by its NUL-terminated line, the next
/// one `next` bytes from the first. Returns (start sector, type, line).
fn parse_targets(out: &[u8], count: u32) -> io::Result<Vec<(u64, String, &[u8])>> {
    let bad = |what: &str| io::Error::other(format!("device-mapper: malformed table: {what}"));
    let field = |at: usize, len: usize| out.get(at..at + len).ok_or_else(|| bad("truncated"));
    let mut targets = Vec::new();
    let mut at = 0usize;
    for i in 0..count {
        let spec = field(at, SPEC_SIZE)?;
        let word = |o: usize| u64::from_ne_bytes(spec[o..o + 8].try_into().unwrap_or([0; 8]));
        let next = u32::from_ne_bytes(spec[20..24].try_into().unwrap_or([0; 4])) as usize;
        let type_bytes = &spec[24..24 + DM_MAX_TYPE_NAME];
        let type_len = type_bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(DM_MAX_TYPE_NAME);
        let rest = &out[at + SPEC_SIZE..];
        let line_len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad("unterminated line"))?;
        targets.push((
            word(0),
            String::from_utf8_lossy(&type_bytes[..type_len]).into_owned(),
            &rest[..line_len],
        ));
        if i + 1 < count {
            if next <= at || next > out.len() {
                return Err(bad("next target out of place"));
            }
            at = next;
        }
    }
    Ok(targets)
}

/// Issues `DM_TABLE_STATUS` for `name` with `flags` and hands the targets to `inspect`.
/// The buffer is zeroed afterwards: with `DM_STATUS_TABLE_FLAG` it holds key material.
fn with_table<T>(
    name: &str,
    flags: u32,
    inspect: impl FnOnce(&[(u64, String, &[u8])]) -> T,
) -> io::Result<T> {
    let mut req = DmRequest::new(name)?;
    req.hdr.data_size = size_of::<DmRequest>() as u32;
    req.hdr.flags = flags | DM_SECURE_DATA_FLAG;
    let what = format!("device-mapper: reading the table of '{name}'");
    let result = call(DM_TABLE_STATUS, &mut req, &what).and_then(|()| {
        if req.hdr.flags & DM_BUFFER_FULL_FLAG != 0 {
            return Err(io::Error::other(format!("{what}: larger than one page")));
        }
        let start = (req.hdr.data_start as usize).saturating_sub(HEADER_SIZE as usize);
        let end = (req.hdr.data_size as usize).saturating_sub(HEADER_SIZE as usize);
        let out = req.data.get(start..end.min(DATA_CAPACITY)).unwrap_or(&[]);
        let targets =
            parse_targets(out, req.hdr.target_count).map_err(|e| with_context(e, what.as_str()))?;
        Ok(inspect(&targets))
    });
    req.data.fill(0);
    std::hint::black_box(&req);
    result
}

/// The targets of `name`'s active table. Read as status lines, so no key material is
/// copied out, and with `DM_NOFLUSH_FLAG`, so that no target (thin-pool) commits its
/// metadata to answer.
fn targets(name: &str) -> io::Result<Vec<Target>> {
    with_table(name, DM_NOFLUSH_FLAG, |ts| {
        ts.iter()
            .map(|(start, target_type, _)| Target {
                start: *start,
                target_type: target_type.clone(),
            })
            .collect()
    })
}

/// Wipes the key of every dm-crypt target of `name`, which must be suspended (the kernel
/// refuses key messages otherwise), and checks the table afterwards: a key is counted as
/// wiped only when its table line no longer carries it. Whether the device holds dm-crypt
/// keys is decided by its table, not by its name or uuid: a hand-made crypt table has
/// no `CRYPT-` uuid, and cryptsetup's verity and integrity devices hold no key.
pub fn wipe_crypt_keys(name: &str) -> io::Result<WipeReport> {
    let crypt_starts: Vec<u64> = targets(name)?
        .into_iter()
        .filter(|t| t.target_type == "crypt")
        .map(|t| t.start)
        .collect();
    if crypt_starts.is_empty() {
        return Ok(WipeReport::default());
    }
    // A table of several dm-crypt segments has a key each: a message reaches the target
    // covering its sector only.
    let mut first_error = None;
    for start in &crypt_starts {
        if let Err(e) = message(name, *start, "key wipe") {
            first_error.get_or_insert(e);
        }
    }
    let wiped = with_table(name, DM_STATUS_TABLE_FLAG, |ts| {
        ts.iter()
            .filter(|(_, t, line)| t == "crypt" && !crypt_line_holds_key(line))
            .count()
    })?;
    match first_error {
        Some(e) if wiped < crypt_starts.len() => Err(e),
        _ => Ok(WipeReport {
            crypt_targets: crypt_starts.len(),
            wiped,
        }),
    }
}

/// Closes the device-mapper device `name` (kernel name `kernel_name`, number `dev`) for
/// good: flushes it, removes it and checks that it is gone. `sys_root` is where sysfs is
/// mounted (`/sys`; a fixture in tests).
///
/// A device flagged for deferred removal goes by itself as its last user closes it, often
/// between the topology being read and this call: found gone in sysfs, or refused by the
/// kernel with `ENXIO` as one it is deleting, it is [`Closed::Gone`].
pub fn close(
    sys_root: &Path,
    name: &str,
    kernel_name: &str,
    dev: (u32, u32),
) -> io::Result<Closed> {
    if gone_from_sysfs(sys_root, dev) {
        return Ok(Closed::Gone);
    }
    match remove_flushed(name, kernel_name, dev) {
        Ok(()) => Ok(Closed::Done),
        Err(e) if errno(&e) == Some(libc::ENXIO) => Ok(Closed::Gone),
        Err(e) => Err(e),
    }
}

/// Whether the block device numbered `dev` has left sysfs. Not when sysfs is not mounted
/// at `sys_root` at all: that says nothing about the device.
fn gone_from_sysfs(sys_root: &Path, (major, minor): (u32, u32)) -> bool {
    let by_number = sys_root.join("dev/block");
    by_number.is_dir() && !by_number.join(format!("{major}:{minor}")).exists()
}

fn remove_flushed(name: &str, kernel_name: &str, (major, minor): (u32, u32)) -> io::Result<()> {
    // Best effort: without a node there is nothing of ours to flush, and the removal
    // itself goes through the control device.
    if let Ok(node) = node_for(kernel_name, major, minor) {
        flush(&node);
    }
    // The planner names a device by its kernel name when sysfs gave no DM name (read
    // while it was going): DM knows no such name, so ask by number.
    if name == kernel_name {
        return remove_by_dev(major, minor);
    }
    remove(name)?;
    // The log says "key wiped" for a dm-crypt mapping: only once it is gone (the kernel
    // zeroes the key as it frees the mapping).
    if exists(name)? {
        return Err(io::Error::other(format!(
            "device-mapper: '{name}' is still there after its removal"
        )));
    }
    Ok(())
}

/// Whether the device-mapper device `name` still exists (`DM_DEV_STATUS` answers ENXIO
/// for one that is gone).
fn exists(name: &str) -> io::Result<bool> {
    match status(name) {
        Ok(_) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENXIO) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::super::devnode::abi_probe;
    use super::*;

    /// Splits the kernel's 64-bit device number encoding, the inverse of [`encode_dev`].
    fn decode_dev(dev: u64) -> (u32, u32) {
        let major = (dev >> 8) & 0xfff;
        let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
        (major as u32, minor as u32)
    }

    /// A device under deferred removal that left sysfs since the topology was read: gone,
    /// without a word to the kernel (no control node, no flush, no removal).
    #[test]
    fn a_device_missing_from_sysfs_is_gone_already() {
        let sys = std::env::temp_dir().join(format!("exitrd-dm-sys-{}", std::process::id()));
        std::fs::create_dir_all(sys.join("dev/block/253:1")).unwrap();
        let gone = gone_from_sysfs(&sys, (253, 7));
        let closed = close(&sys, "vg-going", "dm-7", (253, 7));
        let present = gone_from_sysfs(&sys, (253, 1));
        // sysfs not mounted there at all: that says nothing about the device.
        let no_sysfs = gone_from_sysfs(&sys.join("nothing"), (253, 7));
        std::fs::remove_dir_all(&sys).unwrap();
        assert!(gone);
        assert_eq!(closed.unwrap(), Closed::Gone);
        assert!(!present);
        assert!(!no_sysfs);
    }

    #[test]
    fn layout_matches_kernel_headers() {
        let h = DmIoctl::zeroed();
        let spec = DmTargetSpec {
            sector_start: 0,
            length: 0,
            status: 0,
            next: 0,
            target_type: [0; DM_MAX_TYPE_NAME],
        };
        let r = DmRequest {
            hdr: DmIoctl::zeroed(),
            data: [0; DATA_CAPACITY],
        };
        // The payload area starts right where data_start says.
        assert_eq!(abi_probe::offset(&r, &r.data), u64::from(HEADER_SIZE));
        abi_probe::check(&[
            ("dm_ioctl.size", size_of::<DmIoctl>() as u64),
            ("dm_ioctl.version", abi_probe::offset(&h, &h.version)),
            ("dm_ioctl.data_size", abi_probe::offset(&h, &h.data_size)),
            ("dm_ioctl.data_start", abi_probe::offset(&h, &h.data_start)),
            (
                "dm_ioctl.target_count",
                abi_probe::offset(&h, &h.target_count),
            ),
            ("dm_ioctl.open_count", abi_probe::offset(&h, &h.open_count)),
            ("dm_ioctl.flags", abi_probe::offset(&h, &h.flags)),
            ("dm_ioctl.event_nr", abi_probe::offset(&h, &h.event_nr)),
            ("dm_ioctl.padding", abi_probe::offset(&h, &h.padding)),
            ("dm_ioctl.dev", abi_probe::offset(&h, &h.dev)),
            ("dm_ioctl.name", abi_probe::offset(&h, &h.name)),
            ("dm_ioctl.uuid", abi_probe::offset(&h, &h.uuid)),
            ("dm_ioctl.data", abi_probe::offset(&h, &h.data)),
            ("dm_ioctl.dev.size", std::mem::size_of_val(&h.dev) as u64),
            ("dm_ioctl.name.size", h.name.len() as u64),
            ("dm_ioctl.uuid.size", h.uuid.len() as u64),
            ("dm_ioctl.data.size", h.data.len() as u64),
            ("dm_target_msg.size", TARGET_MSG_HEADER as u64),
            ("dm_target_spec.size", SPEC_SIZE as u64),
            (
                "dm_target_spec.sector_start",
                abi_probe::offset(&spec, &spec.sector_start),
            ),
            (
                "dm_target_spec.length",
                abi_probe::offset(&spec, &spec.length),
            ),
            (
                "dm_target_spec.status",
                abi_probe::offset(&spec, &spec.status),
            ),
            ("dm_target_spec.next", abi_probe::offset(&spec, &spec.next)),
            (
                "dm_target_spec.target_type",
                abi_probe::offset(&spec, &spec.target_type),
            ),
            ("DM_MAX_TYPE_NAME", DM_MAX_TYPE_NAME as u64),
            ("DM_TABLE_STATUS", abi_probe::ioctl_code(DM_TABLE_STATUS)),
            ("DM_STATUS_TABLE_FLAG", u64::from(DM_STATUS_TABLE_FLAG)),
            ("DM_BUFFER_FULL_FLAG", u64::from(DM_BUFFER_FULL_FLAG)),
            ("dm_target_msg.sector", 0),
            ("dm_target_msg.message", TARGET_MSG_HEADER as u64),
            ("DM_NAME_LEN", DM_NAME_LEN as u64),
            ("DM_UUID_LEN", DM_UUID_LEN as u64),
            ("DM_VERSION_MAJOR", u64::from(DM_VERSION[0])),
            ("MISC_MAJOR", MISC_MAJOR),
        ]);
    }

    #[test]
    fn constants_match_kernel_headers() {
        abi_probe::check(&[
            ("DM_DEV_REMOVE", abi_probe::ioctl_code(DM_DEV_REMOVE)),
            ("DM_DEV_SUSPEND", abi_probe::ioctl_code(DM_DEV_SUSPEND)),
            ("DM_DEV_STATUS", abi_probe::ioctl_code(DM_DEV_STATUS)),
            ("DM_TARGET_MSG", abi_probe::ioctl_code(DM_TARGET_MSG)),
            ("DM_SUSPEND_FLAG", u64::from(DM_SUSPEND_FLAG)),
            ("DM_NOFLUSH_FLAG", u64::from(DM_NOFLUSH_FLAG)),
            ("DM_SECURE_DATA_FLAG", u64::from(DM_SECURE_DATA_FLAG)),
        ]);
    }

    #[test]
    fn header_only_request() {
        let req = DmRequest::new("cryptroot").unwrap();
        assert_eq!(req.hdr.version, [4, 0, 0]);
        assert_eq!(req.hdr.data_size, 312);
        assert_eq!(req.hdr.data_start, 312);
        assert_eq!(req.hdr.flags, 0);
        assert_eq!(&req.hdr.name[..10], b"cryptroot\0");
        assert!(req.hdr.name[9..].iter().all(|&b| b == 0));
        assert!(req.hdr.uuid.iter().all(|&b| b == 0));
    }

    #[test]
    fn name_limits() {
        let longest = "n".repeat(DM_NAME_LEN - 1);
        let req = DmRequest::new(&longest).unwrap();
        assert_eq!(req.hdr.name[DM_NAME_LEN - 1], 0, "NUL must fit");

        let too_long = "n".repeat(DM_NAME_LEN);
        let err = DmRequest::new(&too_long).err().expect("128-byte name");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains(&too_long), "{err}");
        // Multi-byte characters count in bytes.
        assert!(DmRequest::new(&"é".repeat(64)).is_err());

        for bad in ["", "a\0b"] {
            let err = DmRequest::new(bad).err().expect("invalid name");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        // Public functions fail the same way before touching the kernel.
        assert_eq!(
            remove(&too_long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            exists(&too_long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn message_layout() {
        let req = DmRequest::target_msg("cryptroot", 0x0102_0304_0506_0708, "key wipe").unwrap();
        let start = req.hdr.data_start as usize - size_of::<DmIoctl>();
        assert_eq!(start, 0);
        let d = &req.data;
        assert_eq!(d[..8], 0x0102_0304_0506_0708u64.to_ne_bytes());
        assert_eq!(&d[8..17], b"key wipe\0");
        assert_eq!(req.hdr.data_size as usize, 312 + 8 + 9);
        assert_eq!(req.hdr.flags, DM_SECURE_DATA_FLAG);
        assert_eq!(&req.hdr.name[..10], b"cryptroot\0");
        // Nothing past the terminating NUL.
        assert!(d[17..].iter().all(|&b| b == 0));
    }

    #[test]
    fn message_limits() {
        let longest = "m".repeat(MAX_MESSAGE_LEN);
        let req = DmRequest::target_msg("x", 0, &longest).unwrap();
        assert_eq!(req.hdr.data_size as usize, size_of::<DmRequest>());
        assert_eq!(req.data[DATA_CAPACITY - 1], 0);

        for bad in [
            String::new(),
            "a\0b".to_string(),
            "m".repeat(MAX_MESSAGE_LEN + 1),
        ] {
            let err = DmRequest::target_msg("x", 0, &bad)
                .err()
                .expect("bad message");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains("'x'"), "{err}");
        }
        let err = message(&"n".repeat(200), 0, "key wipe").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn dev_decoding() {
        for (major, minor) in [
            (253u32, 0u32),
            (253, 17),
            (9, 300),
            (259, 1_048_575),
            (4095, 256),
        ] {
            let dev = stat::makedev(u64::from(major), u64::from(minor));
            assert_eq!(decode_dev(dev), (major, minor), "{major}:{minor}");
            assert_eq!(encode_dev(major, minor), dev, "{major}:{minor}");
        }
    }

    #[test]
    fn request_by_device_number() {
        let req = DmRequest::for_dev(253, 7);
        assert_eq!(req.hdr.version, [4, 0, 0]);
        assert_eq!(req.hdr.data_size, 312);
        // Name and uuid empty: the kernel's lookup falls through to `dev`.
        assert!(req.hdr.name.iter().all(|&b| b == 0));
        assert!(req.hdr.uuid.iter().all(|&b| b == 0));
        assert_eq!(decode_dev(req.hdr.dev), (253, 7));
    }

    #[test]
    fn oversized_data_size_is_refused() {
        let mut req = DmRequest::new("x").unwrap();
        req.hdr.data_size = 4097;
        // Any file will do: the check happens before the ioctl.
        let f = File::open("/dev/null").unwrap();
        assert_eq!(
            dm_ioctl(&f, DM_DEV_STATUS, &mut req)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
    }

    /// Talks to the real kernel without changing anything: asks for the
    /// status of a device that does not exist. Needs root (CAP_MKNOD for the
    /// private control node, CAP_SYS_ADMIN for the ioctl) and device-mapper in
    /// the kernel; run with `--include-ignored`, it fails saying which is missing.
    #[test]
    #[ignore = "needs root and device-mapper: opens a /dev/mapper/control node"]
    fn status_of_missing_device_is_enxio() {
        let dir = std::env::temp_dir().join(format!("exitrd-dm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let node = dir.join("control");
        let made = stat::mknod(
            &node,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            stat::makedev(MISC_MAJOR, MAPPER_CTRL_MINOR),
        );
        let control = made
            .map_err(|e| format!("mknod {} (needs CAP_MKNOD): {e}", node.display()))
            .and_then(|()| {
                open_control(&node)
                    .map_err(|e| format!("opening {} (is dm-mod loaded?): {e}", node.display()))
            });
        let _ = std::fs::remove_dir_all(&dir);
        let control = control.unwrap_or_else(|e| {
            panic!("this test needs root and device-mapper in the kernel: {e}")
        });
        let mut req = DmRequest::new("exitrd-test-no-such-device-9f3c").unwrap();
        match dm_ioctl(&control, DM_DEV_STATUS, &mut req) {
            Err(e) if errno(&e) == Some(libc::EPERM) || errno(&e) == Some(libc::EACCES) => {
                panic!("this test needs root (CAP_SYS_ADMIN) to use device-mapper: {e}")
            }
            Err(e) => assert_eq!(errno(&e), Some(libc::ENXIO), "{e}"),
            Ok(()) => panic!("a device named exitrd-test-no-such-device-9f3c exists"),
        }
        // The kernel accepted our version and reported its own (4.x).
        assert_eq!(req.hdr.version[0], 4);
        println!("kernel dm interface {:?}", req.hdr.version);
    }

    /// `DM_TABLE_STATUS` output as the kernel lays it out: each spec 8-byte aligned,
    /// `next` counted from the first spec.
    fn table_output(targets: &[(u64, &str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (start, kind, line)) in targets.iter().enumerate() {
            let at = out.len();
            out.extend_from_slice(&start.to_ne_bytes());
            out.extend_from_slice(&100u64.to_ne_bytes());
            out.extend_from_slice(&0i32.to_ne_bytes());
            out.extend_from_slice(&0u32.to_ne_bytes());
            let mut name = [0u8; DM_MAX_TYPE_NAME];
            name[..kind.len()].copy_from_slice(kind.as_bytes());
            out.extend_from_slice(&name);
            out.extend_from_slice(line.as_bytes());
            out.push(0);
            while out.len() % 8 != 0 {
                out.push(0);
            }
            if i + 1 < targets.len() {
                let next = out.len() as u32;
                out[at + 20..at + 24].copy_from_slice(&next.to_ne_bytes());
            }
        }
        out
    }

    #[test]
    fn table_targets_are_parsed_with_their_lines() {
        let out = table_output(&[
            (0, "linear", "252:0 2048"),
            (4096, "crypt", "aes-xts-plain64 00ff 0 9:0 4096"),
        ]);
        let targets = parse_targets(&out, 2).unwrap();
        assert_eq!(targets.len(), 2);
        assert_eq!((targets[0].0, targets[0].1.as_str()), (0, "linear"));
        assert_eq!(targets[0].2, b"252:0 2048");
        assert_eq!((targets[1].0, targets[1].1.as_str()), (4096, "crypt"));
        assert_eq!(targets[1].2, b"aes-xts-plain64 00ff 0 9:0 4096");
    }

    #[test]
    fn malformed_table_output_is_an_error_not_a_panic() {
        let out = table_output(&[(0, "linear", "252:0 2048"), (8, "crypt", "x")]);
        assert!(parse_targets(&out[..30], 1).is_err());
        assert!(parse_targets(&out, 3).is_err());
        let mut looping = out.clone();
        looping[20..24].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse_targets(&looping, 2).is_err());
        let unterminated = [out[..SPEC_SIZE].to_vec(), b"abc".to_vec()].concat();
        assert!(parse_targets(&unterminated, 1).is_err());
    }

    #[test]
    fn crypt_key_field_before_and_after_the_wipe() {
        // LUKS1 / plain: the key in hex; LUKS2: a reference into the kernel keyring.
        assert!(crypt_line_holds_key(b"aes-xts-plain64 0a1b2c3d 0 9:0 4096"));
        assert!(crypt_line_holds_key(
            b"aes-xts-plain64 :64:logon:cryptsetup:1234-d0 0 9:0 32768 1 allow_discards"
        ));
        // After "key wipe" the kernel prints its zeroed copy.
        assert!(!crypt_line_holds_key(
            b"aes-xts-plain64 0000000000000000 0 9:0 4096"
        ));
        assert!(!crypt_line_holds_key(b"cipher_null-ecb - 0 7:0 0"));
        assert!(!crypt_line_holds_key(b""));
    }
}
