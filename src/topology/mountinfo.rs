//! `/proc/self/mountinfo` parser (format: proc(5)).
//!
//! A line is: `id parent major:minor root mount-point options [optional...] - fstype source
//! super-options`. Fields are separated by single spaces; the kernel escapes space, tab,
//! newline and backslash in paths as `\ooo` octal, so splitting on spaces is exact.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub id: u32,
    pub parent: u32,
    pub major: u32,
    pub minor: u32,
    /// Path inside the file system that is mounted here (bind mounts).
    pub root: String,
    pub mount_point: String,
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

    pub fn is_read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
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

/// Decodes the kernel's `\ooo` octal escapes. A backslash that does not start a valid
/// three-digit octal escape is kept as it is, so odd input never fails or panics.
pub fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
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
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_line(line: &str, number: usize) -> Result<Mount, ParseError> {
    let err = |reason| ParseError {
        line: number,
        reason,
    };
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.len() < 7 {
        return Err(err("fewer than 7 fields"));
    }
    // Optional fields (shared:N, master:N, ...) come before a lone "-"; none of them is
    // ever "-" itself, so the first "-" from field 6 on is the separator.
    let sep = fields[6..]
        .iter()
        .position(|f| *f == "-")
        .map(|p| p + 6)
        .ok_or(err("no '-' separator"))?;
    if fields.len() < sep + 3 {
        return Err(err("missing fstype or source after '-'"));
    }
    let id = fields[0].parse().map_err(|_| err("bad mount id"))?;
    let parent = fields[1].parse().map_err(|_| err("bad parent id"))?;
    let (major, minor) = fields[2]
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or(err("bad major:minor"))?;
    Ok(Mount {
        id,
        parent,
        major,
        minor,
        root: unescape(fields[3]),
        mount_point: unescape(fields[4]),
        options: fields[5].to_string(),
        fstype: unescape(fields[sep + 1]),
        source: unescape(fields[sep + 2]),
        // Super options never contain spaces, but join defensively.
        super_options: fields[sep + 3..].join(" "),
    })
}

/// Parses a whole mountinfo text. Blank lines are skipped; any malformed line is an error
/// naming its line number (callers at shutdown log it and go on with what they have).
pub fn parse(text: &str) -> Result<Vec<Mount>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(l, i + 1))
        .collect()
}

/// Like [`parse`], but skips malformed lines and returns them as errors beside the mounts.
pub fn parse_lenient(text: &str) -> (Vec<Mount>, Vec<ParseError>) {
    let mut mounts = Vec::new();
    let mut errors = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match parse_line(l, i + 1) {
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
        assert!(root.is_read_only());
    }
}
