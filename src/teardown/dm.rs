//! Device-mapper control interface (`/dev/mapper/control`).
//!
//! Written from `<linux/dm-ioctl.h>`, interface version 4. Every request is
//! one buffer that starts with `struct dm_ioctl` ([`DmIoctl`]); commands
//! that carry a payload (here only `DM_TARGET_MSG`) put it at `data_start`
//! bytes from the start of the buffer, and `data_size` covers header plus
//! payload. Devices are addressed by name only (the uuid field stays empty:
//! the kernel refuses requests that give both).
//!
//! The kernel copies the header back on return; [`info`] reads it, and
//! [`suspend`] / [`resume`] check that the returned `DM_SUSPEND_FLAG` agrees
//! with what was asked.

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

use super::devnode::with_context;

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
/// `DM_TARGET_MSG`: passes a `struct dm_target_msg` to a target.
const DM_TARGET_MSG: ioctl_num_type =
    nix::request_code_readwrite!(DM_IOCTL, DM_TARGET_MSG_CMD, size_of::<DmIoctl>());

/// In/out: device is (to be) suspended.
const DM_SUSPEND_FLAG: u32 = 1 << 1;
/// In: suspend without flushing queued I/O.
const DM_NOFLUSH_FLAG: u32 = 1 << 11;
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

/// Size of the header, which is also where our payload starts.
const HEADER_SIZE: u32 = size_of::<DmIoctl>() as u32;
/// `sizeof(struct dm_target_msg)`: the `__u64 sector` before the message.
const TARGET_MSG_HEADER: usize = size_of::<u64>();
/// Room after the header; the whole request is one 4 KiB page.
const DATA_CAPACITY: usize = 4096 - size_of::<DmIoctl>();
/// Longest message [`message`] accepts (room for the sector and the NUL).
pub const MAX_MESSAGE_LEN: usize = DATA_CAPACITY - TARGET_MSG_HEADER - 1;

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

/// State of a device-mapper device as reported by `DM_DEV_STATUS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmInfo {
    /// Number of openers of the mapped device (0 means removable).
    pub open_count: i32,
    /// `DM_SUSPEND_FLAG` was set.
    pub suspended: bool,
    /// Targets in the active table (0 when there is no active table).
    pub target_count: u32,
    /// `(major, minor)` of the mapped block device.
    pub dev: (u32, u32),
}

/// Splits the kernel's 64-bit device number encoding (`huge_encode_dev`:
/// minor bits 0-7, major bits 8-19, minor bits 8-19 at 20-31).
fn decode_dev(dev: u64) -> (u32, u32) {
    let major = (dev >> 8) & 0xfff;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    // Both are masked to at most 20 bits above.
    (major as u32, minor as u32)
}

/// The kernel's 64-bit device number encoding (`huge_encode_dev`), the inverse of
/// [`decode_dev`].
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
pub fn remove(name: &str) -> io::Result<()> {
    let mut req = DmRequest::new(name)?;
    call(
        DM_DEV_REMOVE,
        &mut req,
        &format!("device-mapper: removing '{name}'"),
    )
}

/// Removes the device-mapper device numbered `major:minor` (`DM_DEV_REMOVE` looked up
/// by device number), for a device whose name could not be read. Errors as [`remove`].
pub fn remove_by_dev(major: u32, minor: u32) -> io::Result<()> {
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

/// Resumes `name` (`DM_DEV_SUSPEND` without `DM_SUSPEND_FLAG`). Succeeds only
/// if the kernel reports the device no longer suspended.
pub fn resume(name: &str) -> io::Result<()> {
    let mut req = DmRequest::new(name)?;
    let what = format!("device-mapper: resuming '{name}'");
    call(DM_DEV_SUSPEND, &mut req, &what)?;
    if req.hdr.flags & DM_SUSPEND_FLAG != 0 {
        return Err(io::Error::other(format!(
            "{what}: the kernel still reports the device as suspended"
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
pub fn message(name: &str, sector: u64, msg: &str) -> io::Result<()> {
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

/// Queries `name` (`DM_DEV_STATUS`).
pub fn info(name: &str) -> io::Result<DmInfo> {
    let mut req = DmRequest::new(name)?;
    call(
        DM_DEV_STATUS,
        &mut req,
        &format!("device-mapper: querying status of '{name}'"),
    )?;
    Ok(DmInfo {
        open_count: req.hdr.open_count,
        suspended: req.hdr.flags & DM_SUSPEND_FLAG != 0,
        target_count: req.hdr.target_count,
        dev: decode_dev(req.hdr.dev),
    })
}

#[cfg(test)]
mod tests {
    use super::super::devnode::{abi_probe, errno};
    use super::*;

    #[test]
    fn layout_matches_kernel_headers() {
        let h = DmIoctl::zeroed();
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
            info(&too_long).unwrap_err().kind(),
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
}
