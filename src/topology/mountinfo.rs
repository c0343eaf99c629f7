//! `/proc/self/mountinfo` parser (format: proc(5)).
//!
//! A line is: `id parent major:minor root mount-point options [optional...] - fstype source
//! super-options`. Fields are separated by single spaces; the kernel escapes space, tab,
//! newline and backslash in paths as `\ooo` octal, so splitting on spaces is exact.
//!
//! Paths on Linux are bytes and need not be UTF-8. The mount point, which the runtime
//! hands to `umount2` and `mount`, is kept exact ([`MountPath`]); the other fields are
//! only shown or compared with known names, and are text.

use serde::{Serialize, Serializer};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// A mount point exactly as the kernel has it. System calls take [`MountPath::as_path`];
/// messages, JSON and matching against known text take the text form, in which bytes that
/// are not UTF-8 show as U+FFFD (two such paths can show alike, and are still different).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MountPath {
    path: PathBuf,
    /// `path` as text, made once: messages name mount points often.
    text: String,
}

impl MountPath {
    pub fn from_bytes(bytes: Vec<u8>) -> MountPath {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        MountPath {
            path: PathBuf::from(OsString::from_vec(bytes)),
            text,
        }
    }

    /// The exact path, for system calls.
    pub fn as_path(&self) -> &Path {
        &self.path
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.path.as_os_str().as_bytes()
    }

    /// The path as text, for messages and for matching against text: not the path when
    /// it is not UTF-8, so never for a system call.
    pub fn as_lossy_str(&self) -> &str {
        &self.text
    }
}

impl From<String> for MountPath {
    fn from(text: String) -> MountPath {
        MountPath {
            path: PathBuf::from(&text),
            text,
        }
    }
}

impl From<&str> for MountPath {
    fn from(text: &str) -> MountPath {
        MountPath::from(text.to_string())
    }
}

impl fmt::Display for MountPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Shows the exact bytes: `"/mnt/caf\xE9"`.
impl fmt::Debug for MountPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.path, f)
    }
}

impl Serialize for MountPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

/// Equal to a text path only when the bytes are the same: a path that is not UTF-8 equals
/// no text.
impl PartialEq<str> for MountPath {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for MountPath {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl AsRef<[u8]> for MountPath {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<OsStr> for MountPath {
    fn as_ref(&self) -> &OsStr {
        self.path.as_os_str()
    }
}

impl AsRef<Path> for MountPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub id: u32,
    pub parent: u32,
    pub major: u32,
    pub minor: u32,
    /// Path inside the file system that is mounted here (bind mounts).
    pub root: String,
    pub mount_point: MountPath,
    pub options: String,
    pub fstype: String,
    /// The mount source as the kernel shows it; `-` or `none` for many virtual file systems.
    pub source: String,
    pub super_options: String,
}

impl Mount {
    /// Whether the mount is backed by a block device (anonymous devices use major 0).
    pub fn is_block_backed(&self) -> bool {
        self.major != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mountinfo line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseError {}

/// Decodes the kernel's `\ooo` octal escapes, as text: bytes that are not UTF-8 become
/// U+FFFD (see [`unescape_bytes`]).
pub fn unescape(s: &str) -> String {
    text(&unescape_bytes(s.as_bytes()))
}

/// Decodes the kernel's `\ooo` octal escapes into the exact bytes. A backslash that does
/// not start a valid three-digit octal escape is kept as it is, so odd input never fails
/// or panics.
pub fn unescape_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let digits = bytes.get(i + 1..i + 4).unwrap_or(&[]);
            if digits.len() == 3 && digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn parse_line(line: &[u8], number: usize) -> Result<Mount, ParseError> {
    let err = |reason| ParseError {
        line: number,
        reason,
    };
    let number_in = |field: &[u8]| std::str::from_utf8(field).ok()?.parse::<u32>().ok();
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    if fields.len() < 7 {
        return Err(err("fewer than 7 fields"));
    }
    // Optional fields (shared:N, master:N, ...) come before a lone "-"; none of them is
    // ever "-" itself, so the first "-" from field 6 on is the separator.
    let sep = fields[6..]
        .iter()
        .position(|f| *f == b"-")
        .map(|p| p + 6)
        .ok_or(err("no '-' separator"))?;
    if fields.len() < sep + 3 {
        return Err(err("missing fstype or source after '-'"));
    }
    let id = number_in(fields[0]).ok_or(err("bad mount id"))?;
    let parent = number_in(fields[1]).ok_or(err("bad parent id"))?;
    let (major, minor) = fields[2]
        .iter()
        .position(|&b| b == b':')
        .and_then(|colon| {
            let (a, b) = fields[2].split_at(colon);
            Some((number_in(a)?, number_in(&b[1..])?))
        })
        .ok_or(err("bad major:minor"))?;
    Ok(Mount {
        id,
        parent,
        major,
        minor,
        root: text(&unescape_bytes(fields[3])),
        mount_point: MountPath::from_bytes(unescape_bytes(fields[4])),
        options: text(fields[5]),
        fstype: text(&unescape_bytes(fields[sep + 1])),
        source: text(&unescape_bytes(fields[sep + 2])),
        // Super options never contain spaces, but join defensively.
        super_options: text(&fields[sep + 3..].join(&b' ')),
    })
}

/// The lines that are not blank, numbered from 1. The kernel writes paths byte for byte
/// (it escapes only space, tab, newline and backslash), so the table is bytes, not text.
fn numbered_lines(table: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    table
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
}

/// Parses a whole mountinfo table. Blank lines are skipped; any malformed line is an error
/// naming its line number (callers at shutdown log it and go on with what they have).
pub fn parse(table: impl AsRef<[u8]>) -> Result<Vec<Mount>, ParseError> {
    numbered_lines(table.as_ref())
        .map(|(n, l)| parse_line(l, n))
        .collect()
}

/// Like [`parse`], but skips malformed lines and returns them as errors beside the mounts.
pub fn parse_lenient(table: impl AsRef<[u8]>) -> (Vec<Mount>, Vec<ParseError>) {
    let mut mounts = Vec::new();
    let mut errors = Vec::new();
    for (n, l) in numbered_lines(table.as_ref()) {
        match parse_line(l, n) {
            Ok(m) => mounts.push(m),
            Err(e) => errors.push(e),
        }
    }
    (mounts, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc5_example_with_optional_field() {
        let m = parse(
            "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n",
        )
        .unwrap();
        assert_eq!(m.len(), 1);
        let m = &m[0];
        assert_eq!((m.id, m.parent, m.major, m.minor), (36, 35, 98, 0));
        assert_eq!(m.root, "/mnt1");
        assert_eq!(m.mount_point, "/mnt2");
        assert_eq!(m.fstype, "ext3");
        assert_eq!(m.source, "/dev/root");
        assert_eq!(m.super_options, "rw,errors=continue");
        assert!(m.is_block_backed());
    }

    #[test]
    fn several_optional_fields_and_none() {
        let t = "1 0 8:1 / / rw shared:1 master:2 propagate_from:3 - ext4 /dev/sda1 rw\n\
                 2 1 0:5 / /proc rw - proc proc rw\n";
        let m = parse(t).unwrap();
        assert_eq!(m[0].fstype, "ext4");
        assert_eq!(m[1].fstype, "proc");
        assert!(!m[1].is_block_backed());
    }

    #[test]
    fn source_that_is_a_dash() {
        let m = parse("40 30 0:50 / /run/x rw,relatime - tmpfs - rw,size=10k\n").unwrap();
        assert_eq!(m[0].fstype, "tmpfs");
        assert_eq!(m[0].source, "-");
        assert_eq!(m[0].super_options, "rw,size=10k");
    }

    #[test]
    fn octal_escapes_in_paths() {
        let m = parse("50 1 8:2 / /mnt/my\\040disk\\011tab\\134back rw - vfat /dev/sd\\040b1 rw\n")
            .unwrap();
        assert_eq!(m[0].mount_point, "/mnt/my disk\ttab\\back");
        assert_eq!(m[0].source, "/dev/sd b1");
    }

    #[test]
    fn mount_points_that_are_not_utf8_keep_their_bytes() {
        // Latin-1 "café" and a lone 0xff: valid names on Linux, not UTF-8.
        let m = parse(
            "60 1 8:3 / /mnt/caf\\351 rw - ext4 /dev/sdc1 rw\n\
             61 1 8:4 / /mnt/\\377\\040x rw - ext4 /dev/sdd1 rw\n",
        )
        .unwrap();
        assert_eq!(m[0].mount_point.as_bytes(), b"/mnt/caf\xe9");
        assert_eq!(m[1].mount_point.as_bytes(), b"/mnt/\xff x");
        // Messages show them lossily.
        assert_eq!(m[0].mount_point.to_string(), "/mnt/caf\u{fffd}");
        assert_ne!(m[0].mount_point, "/mnt/caf\u{fffd}");
    }

    /// The kernel escapes only space, tab, newline and backslash: other bytes that are not
    /// UTF-8 come as they are.
    #[test]
    fn mount_points_written_raw_by_the_kernel_keep_their_bytes() {
        let m = parse(b"63 43 0:39 / /tmp/caf\xe9 rw,relatime - tmpfs none rw\n").unwrap();
        assert_eq!(m[0].mount_point.as_bytes(), b"/tmp/caf\xe9");
        assert_eq!(m[0].fstype, "tmpfs");
    }

    #[test]
    fn unescape_keeps_invalid_sequences() {
        assert_eq!(unescape("a\\"), "a\\");
        assert_eq!(unescape("a\\09"), "a\\09");
        assert_eq!(unescape("a\\400"), "a\\400");
        assert_eq!(unescape("\\101\\102"), "AB");
        assert_eq!(unescape("x\\04"), "x\\04");
    }

    #[test]
    fn malformed_lines_are_errors_with_line_numbers() {
        let e = parse("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\ngarbage\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(parse("1 0 8:1 / / rw shared:1 ext4 /dev/sda1 rw\n").is_err());
        assert!(parse("1 0 81 / / rw - ext4 /dev/sda1 rw\n").is_err());
        assert!(parse("1 0 8:1 / / rw - ext4\n").is_err());
        let (ok, bad) = parse_lenient("1 0 8:1 / / rw - ext4 /dev/sda1 rw\nbad line\n");
        assert_eq!((ok.len(), bad.len()), (1, 1));
    }

    #[test]
    fn exitrd_view_fixture_parses() {
        let text = include_str!("../../tests/fixtures/exitrd-view/proc/self/mountinfo");
        let m = parse(text).unwrap();
        assert_eq!(m.len(), 35);
        let root = m.iter().find(|m| m.mount_point == "/oldroot").unwrap();
        assert_eq!((root.major, root.minor), (252, 1));
        assert_eq!(root.source, "/dev/mapper/vg0-root");
        assert!(root.options.split(',').any(|o| o == "ro"));
    }
}
