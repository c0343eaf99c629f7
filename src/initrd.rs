//! Reading initramfs-tools images, for `exitrd prepare --from /boot/initrd.img-X`: the
//! last fallback when neither the booted initramfs nor the installed files give a payload.
//!
//! An image is a run of newc cpio archives ("070701", or "070702" with a checksum), each
//! ending in a `TRAILER!!!` entry: first the uncompressed ones (CPU microcode and other
//! early files, and since initramfs-tools 0.141 the already compressed kernel modules),
//! with zero bytes allowed between them, then one compressed archive, the main one.
//! gzip, zstd, xz and lz4 (the legacy frame that `lz4 -l` writes, the only one the kernel
//! reads) are decoded; bzip2, lzma and lzop images are recognised and refused by name.
//!
//! Only entries below `exitrd/` are written: regular files (hard links too), directories
//! and symbolic links, with their permission bits; everything else is read past. The image
//! is streamed: memory use is the decoder's window (at most 64 MiB for xz, 128 MiB for zstd,
//! 8 MiB for lz4, 32 KiB for gzip) plus small buffers, never the image. Reading stops at the
//! end of the compressed archive; what initramfs-tools may append after it is not read.
//!
//! The image is not trusted to be sane ([`Limits`]): what is read in all (every part,
//! the zero padding and what is read past counted, not only the payload), the number of
//! entries, the payload's size and the room left on the destination file system are
//! bounded, so that a corrupt file, a decompression bomb or `/dev/zero` ends in an error
//! instead of filling `/run` or running for hours.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

/// The directory the initramfs-tools hook puts the payload in, inside the image.
pub const PAYLOAD_DIR: &str = "exitrd";

/// Extraction refuses to write more than this (the scratch directory is on a tmpfs).
pub const MAX_PAYLOAD_BYTES: u64 = 512 << 20;

/// What one extraction may read and write. The defaults are far above any image
/// initramfs-tools builds; tests pass small values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes read in all: the image's own bytes (uncompressed parts, zero padding,
    /// compressed input) plus every byte the decoder produces, below `exitrd/` or not.
    /// Counting only what is written would let a small image decompress for hours.
    pub max_read: u64,
    /// cpio entries (headers) read, trailers included, in every part.
    pub max_entries: u64,
    /// Bytes of file data written below the payload directory.
    pub max_payload: u64,
    /// Room left free on the destination's file system (typically the `/run` tmpfs,
    /// which the running system needs too) after each file is written.
    pub keep_free: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // The kernel unpacks the whole image into memory at boot: 2 GiB is more than
            // any machine that boots it would spare.
            max_read: 2 << 30,
            // A generous initramfs (all modules, all firmware) has some ten thousand.
            max_entries: 1 << 20,
            max_payload: MAX_PAYLOAD_BYTES,
            keep_free: 1 << 20,
        }
    }
}

const HEADER_LEN: usize = 110;
const TRAILER: &[u8] = b"TRAILER!!!";
/// PATH_MAX: longer names or symlink targets are not from mkinitramfs.
const MAX_NAME: usize = 4096;

/// How one part of an image is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
    Lz4Legacy,
    Lz4Frame,
    Bzip2,
    Lzma,
    Lzop,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Lz4Legacy => "lz4",
            Compression::Lz4Frame => "lz4 (frame format)",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Lzop => "lzop",
        }
    }

    /// Recognises a part by its first bytes (at least 6 wanted).
    pub fn detect(head: &[u8]) -> Option<Compression> {
        const MAGICS: &[(&[u8], Compression)] = &[
            (b"070701", Compression::None),
            (b"070702", Compression::None),
            (&[0x1f, 0x8b], Compression::Gzip),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0], Compression::Xz),
            (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4Legacy),
            (&[0x04, 0x22, 0x4d, 0x18], Compression::Lz4Frame),
            (b"BZh", Compression::Bzip2),
            (&[0x5d, 0, 0], Compression::Lzma),
            (&[0x89, b'L', b'Z', b'O'], Compression::Lzop),
        ];
        MAGICS
            .iter()
            .find(|(magic, _)| head.starts_with(magic))
            .map(|&(_, c)| c)
    }
}

/// What an extraction found and wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// How each part of the image was stored, in order.
    pub parts: Vec<Compression>,
    pub files: u64,
    pub hardlinks: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Device nodes, fifos and sockets below the payload directory, not created.
    pub skipped: u64,
    /// Bytes of file data written.
    pub bytes: u64,
}

impl Extracted {
    /// Whether anything below the payload directory was found.
    pub fn found(&self) -> bool {
        self.files + self.dirs + self.symlinks + self.skipped > 0
    }
}

impl fmt::Display for Extracted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<&str> = self.parts.iter().map(|c| c.name()).collect();
        write!(
            f,
            "{} files ({} KiB), {} directories, {} symlinks from {} parts ({})",
            self.files,
            self.bytes.div_ceil(1024),
            self.dirs,
            self.symlinks,
            self.parts.len(),
            parts.join(", ")
        )
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Unsupported compressions: say which, and what to do.
fn unsupported(c: Compression) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "its main archive is {}-compressed, which exitrd cannot read; set COMPRESS=zstd \
             (or gzip, xz, lz4) in /etc/initramfs-tools/initramfs.conf and run \
             update-initramfs -u",
            c.name()
        ),
    )
}

/// Extracts the payload directory of the image at `image` below `dest` (an existing,
/// private directory): the files land in `dest/exitrd/...`.
pub fn extract(image: &Path, dest: &Path) -> io::Result<Extracted> {
    extract_with(image, dest, &Limits::default())
}

/// Like [`extract`], within other limits.
pub fn extract_with(image: &Path, dest: &Path, limits: &Limits) -> io::Result<Extracted> {
    let file = File::open(image)?;
    extract_from_with(file, dest, limits)
}

/// Like [`extract`], from any reader.
pub fn extract_from<R: Read + 'static>(image: R, dest: &Path) -> io::Result<Extracted> {
    extract_from_with(image, dest, &Limits::default())
}

/// Like [`extract_from`], within other limits.
pub fn extract_from_with<R: Read + 'static>(
    image: R,
    dest: &Path,
    limits: &Limits,
) -> io::Result<Extracted> {
    // One count for the raw image and the decoder's output: both cost time, and either
    // alone can be made huge (endless zero padding; a decompression bomb).
    let read = Meter {
        used: Rc::new(Cell::new(0)),
        max: limits.max_read,
    };
    let mut src = Source::new(Metered {
        inner: image,
        meter: read.clone(),
    });
    let mut ex = Extractor::new(dest, PAYLOAD_DIR, limits);
    loop {
        src.skip_zeros()?;
        let at = src.offset;
        let head = src.peek(8)?;
        if head.is_empty() {
            break;
        }
        let Some(kind) = Compression::detect(head) else {
            let shown: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
            return Err(invalid(format!(
                "not an initramfs image: unknown data at byte {at} ({})",
                shown.join(" ")
            )));
        };
        ex.found.parts.push(kind);
        if kind == Compression::None {
            // The kernel reads an uncompressed archive only at a 4-byte boundary.
            if at % 4 != 0 {
                return Err(invalid(format!(
                    "not an initramfs image: cpio archive at unaligned byte {at}"
                )));
            }
            let mut r = Counting {
                inner: &mut src,
                pos: at,
            };
            ex.archive(&mut r)
                .map_err(|e| io::Error::new(e.kind(), format!("cpio archive at byte {at}: {e}")))?;
            continue;
        }
        let mut r = Counting {
            inner: Metered {
                inner: decoder(kind, src)?,
                meter: read.clone(),
            },
            pos: 0,
        };
        ex.archive(&mut r).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{} archive at byte {at}: {e}", kind.name()),
            )
        })?;
        // The main archive is the last one initramfs-tools writes.
        break;
    }
    if ex.found.parts.is_empty() {
        return Err(invalid("not an initramfs image: empty, or only zero bytes"));
    }
    ex.finish()
}

fn decoder<R: Read + 'static>(kind: Compression, src: Source<R>) -> io::Result<Box<dyn Read>> {
    Ok(match kind {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(src)),
        Compression::Zstd => Box::new(ZstdFrames::new(src)?),
        Compression::Xz => Box::new(xz4rust::XzReader::new_with_buffer_size_and_decoder(
            src,
            std::num::NonZeroUsize::new(64 << 10).expect("nonzero"),
            xz4rust::XzDecoder::in_heap_with_alloc_dict_size(1 << 20, 64 << 20),
        )),
        Compression::Lz4Legacy => Box::new(Lz4Legacy::new(src)?),
        other => return Err(unsupported(other)),
    })
}

/// The shared count of bytes read, against [`Limits::max_read`].
#[derive(Clone)]
struct Meter {
    used: Rc<Cell<u64>>,
    max: u64,
}

/// Counts what passes through it and fails once the meter is over its bound.
struct Metered<R> {
    inner: R,
    meter: Meter,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        let used = self.meter.used.get().saturating_add(n as u64);
        self.meter.used.set(used);
        if used > self.meter.max {
            return Err(invalid(format!(
                "more than {} MiB read and unpacked, far more than an initramfs holds: the \
                 file is corrupt or not an initramfs-tools image",
                self.meter.max >> 20
            )));
        }
        Ok(n)
    }
}

/// A buffered reader over the image that can look ahead a few bytes.
struct Source<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes consumed from the image so far.
    offset: u64,
}

impl<R: Read> Source<R> {
    fn new(inner: R) -> Self {
        Source {
            inner,
            buf: vec![0; 64 << 10],
            start: 0,
            end: 0,
            offset: 0,
        }
    }

    /// Up to `n` bytes ahead (fewer only at the end of the image), not consumed.
    fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.end - self.start < n {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            while self.end < n {
                let got = match self.inner.read(&mut self.buf[self.end..]) {
                    Ok(got) => got,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if got == 0 {
                    break;
                }
                self.end += got;
            }
        }
        Ok(&self.buf[self.start..self.end.min(self.start + n)])
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.offset += n as u64;
    }

    /// Zero bytes between archives are allowed (the kernel skips them too).
    fn skip_zeros(&mut self) -> io::Result<()> {
        loop {
            let want = self.buf.len();
            let head = self.peek(want.min(4096))?;
            if head.is_empty() {
                return Ok(());
            }
            let zeros = head.iter().take_while(|&&b| b == 0).count();
            let all = zeros == head.len();
            self.consume(zeros);
            if !all {
                return Ok(());
            }
        }
    }
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            if out.len() >= self.buf.len() {
                let n = self.inner.read(out)?;
                self.offset += n as u64;
                return Ok(n);
            }
            self.start = 0;
            self.end = self.inner.read(&mut self.buf)?;
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.consume(n);
        Ok(n)
    }
}

/// Tracks the position in a stream, for the 4-byte alignment of cpio and for messages.
struct Counting<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read> Counting<R> {
    fn exact(&mut self, out: &mut [u8], what: &str) -> io::Result<()> {
        let at = self.pos;
        self.read_exact(out).map_err(|e| truncated(e, what, at))
    }

    /// Reads past `n` bytes.
    fn skip(&mut self, n: u64, what: &str) -> io::Result<()> {
        let at = self.pos;
        let got = io::copy(&mut self.by_ref().take(n), &mut io::sink())?;
        if got < n {
            return Err(truncated(
                io::ErrorKind::UnexpectedEof.into(),
                what,
                at + got,
            ));
        }
        Ok(())
    }

    fn align(&mut self, what: &str) -> io::Result<()> {
        self.skip(pad4(self.pos), what)
    }
}

fn truncated(e: io::Error, what: &str, at: u64) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        invalid(format!(
            "truncated: the image ends inside {what} (byte {at})"
        ))
    } else {
        io::Error::new(e.kind(), format!("reading {what} at byte {at}: {e}"))
    }
}

fn pad4(n: u64) -> u64 {
    (4 - n % 4) % 4
}

/// One newc header and its name.
#[derive(Debug)]
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    devmajor: u32,
    devminor: u32,
    name: Vec<u8>,
}

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

fn read_header<R: Read>(r: &mut Counting<R>) -> io::Result<Header> {
    let start = r.pos;
    let mut raw = [0u8; HEADER_LEN];
    r.exact(&mut raw, "a cpio header")?;
    if &raw[..5] != b"07070" || !(raw[5] == b'1' || raw[5] == b'2') {
        return Err(invalid(format!(
            "bad cpio header at byte {start}: magic {:?}",
            String::from_utf8_lossy(&raw[..6])
        )));
    }
    let mut fields = [0u32; 13];
    for (i, f) in fields.iter_mut().enumerate() {
        let hex = &raw[6 + 8 * i..14 + 8 * i];
        *f = std::str::from_utf8(hex)
            .ok()
            .and_then(|s| u32::from_str_radix(s, 16).ok())
            .ok_or_else(|| {
                invalid(format!(
                    "bad cpio header at byte {start}: field {} is not hex",
                    i + 1
                ))
            })?;
    }
    let namesize = fields[11] as usize;
    if namesize == 0 || namesize > MAX_NAME {
        return Err(invalid(format!(
            "bad cpio header at byte {start}: name size {namesize}"
        )));
    }
    let mut name = vec![0u8; namesize];
    r.exact(&mut name, "a cpio file name")?;
    // The name ends in NUL; header and name are padded to 4 bytes from the header.
    if name.pop() != Some(0) {
        return Err(invalid(format!(
            "bad cpio header at byte {start}: name not NUL-terminated"
        )));
    }
    r.skip(pad4((HEADER_LEN + namesize) as u64), "cpio padding")?;
    Ok(Header {
        ino: fields[0],
        mode: fields[1],
        nlink: fields[4],
        filesize: fields[6],
        devmajor: fields[7],
        devminor: fields[8],
        name,
    })
}

/// The safe relative path of an entry name, without `./`; None for the archive root.
/// Absolute names and `..` are refused.
fn relative_name(raw: &[u8]) -> io::Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => {
                return Err(invalid(format!(
                    "unsafe path {:?} in the image (absolute or with ..)",
                    String::from_utf8_lossy(raw)
                )))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Writes the entries below one directory of the image into a destination directory.
struct Extractor<'a> {
    dest: &'a Path,
    prefix: &'a str,
    /// Regular files with more than one link, by (devmajor, devminor, ino), within the
    /// current archive: where the inode was first written, relative to `dest`.
    links: HashMap<(u32, u32, u32), PathBuf>,
    /// Directory modes, applied at the end (a read-only directory must still be filled).
    dir_modes: Vec<(PathBuf, u32)>,
    limits: &'a Limits,
    /// Headers read so far, in every archive.
    entries: u64,
    found: Extracted,
}

impl<'a> Extractor<'a> {
    fn new(dest: &'a Path, prefix: &'a str, limits: &'a Limits) -> Self {
        Extractor {
            dest,
            prefix,
            links: HashMap::new(),
            dir_modes: Vec::new(),
            limits,
            entries: 0,
            found: Extracted::default(),
        }
    }

    /// Reads one archive up to and including its trailer.
    fn archive<R: Read>(&mut self, r: &mut Counting<R>) -> io::Result<()> {
        loop {
            let h = read_header(r)?;
            // Empty entries cost little data each but time, links and inodes: bounded
            // apart from the bytes.
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(invalid(format!(
                    "more than {} entries, far more than an initramfs holds: the file is \
                     corrupt or not an initramfs-tools image",
                    self.limits.max_entries
                )));
            }
            if h.name == TRAILER {
                // Inode numbers are only unique within one archive.
                self.links.clear();
                return Ok(());
            }
            let at = r.pos;
            self.entry(&h, r)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", h.display(at))))?;
            r.align("cpio padding")?;
        }
    }

    fn entry<R: Read>(&mut self, h: &Header, r: &mut Counting<R>) -> io::Result<()> {
        let size = u64::from(h.filesize);
        let rel = relative_name(&h.name)?;
        let wanted = rel.as_ref().is_some_and(|p| {
            p.components().next() == Some(Component::Normal(OsStr::new(self.prefix)))
        });
        let key = (h.devmajor, h.devminor, h.ino);
        let kind = h.mode & S_IFMT;
        let Some(rel) = rel.filter(|_| wanted) else {
            // Outside the payload; but a hard link group's data may come with a name
            // outside it, the last one of the group.
            if kind == S_IFREG && h.nlink > 1 && size > 0 {
                if let Some(first) = self.links.get(&key).cloned() {
                    return self.write_data(&first, size, r);
                }
            }
            return r.skip(size, "file data");
        };
        let path = self.checked(&rel)?;
        match kind {
            S_IFDIR => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(&path)?;
                        fs::DirBuilder::new().mode(0o700).create(&path)?;
                    }
                    Err(_) => fs::DirBuilder::new().mode(0o700).create(&path)?,
                }
                self.dir_modes.push((path, h.mode & 0o777));
                self.found.dirs += 1;
                r.skip(size, "directory data")
            }
            S_IFLNK => {
                if size as usize > MAX_NAME {
                    return Err(invalid(format!("symlink target of {size} bytes")));
                }
                let mut target = vec![0u8; size as usize];
                r.exact(&mut target, "a symlink target")?;
                remove_existing(&path)?;
                symlink(OsStr::from_bytes(&target), &path)?;
                self.found.symlinks += 1;
                Ok(())
            }
            S_IFREG => {
                self.room_for(size)?;
                remove_existing(&path)?;
                if h.nlink > 1 {
                    if let Some(first) = self.links.get(&key).cloned() {
                        fs::hard_link(self.checked(&first)?, &path)?;
                        self.found.hardlinks += 1;
                        // newc carries the data with the last name of the group.
                        return if size > 0 {
                            self.write_data(&first, size, r)
                        } else {
                            Ok(())
                        };
                    }
                    self.links.insert(key, rel.clone());
                }
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&path)?;
                self.copy(&mut f, size, r)?;
                f.set_permissions(fs::Permissions::from_mode(h.mode & 0o777))?;
                self.found.files += 1;
                Ok(())
            }
            _ => {
                self.found.skipped += 1;
                r.skip(size, "data")
            }
        }
    }

    /// `dest/rel`, after creating the missing parent directories of `rel` and refusing to
    /// go through anything but a real directory (a symlink there, even one an earlier
    /// entry made, would lead the writes out of `dest`).
    fn checked(&self, rel: &Path) -> io::Result<PathBuf> {
        let mut dir = self.dest.to_path_buf();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for c in parent.components() {
            dir.push(c);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(invalid(format!(
                        "{} is not a directory in the image",
                        dir.strip_prefix(self.dest).unwrap_or(&dir).display()
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new().mode(0o755).create(&dir)?
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self.dest.join(rel))
    }

    /// Writes the data of a hard link group into the file already created for it.
    fn write_data<R: Read>(
        &mut self,
        rel: &Path,
        size: u64,
        r: &mut Counting<R>,
    ) -> io::Result<()> {
        self.room_for(size)?;
        let path = self.checked(rel)?;
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)?;
        self.copy(&mut f, size, r)
    }

    fn copy<R: Read>(&mut self, f: &mut File, size: u64, r: &mut Counting<R>) -> io::Result<()> {
        let at = r.pos;
        let got = io::copy(&mut r.by_ref().take(size), f)?;
        if got < size {
            return Err(truncated(
                io::ErrorKind::UnexpectedEof.into(),
                "file data",
                at + got,
            ));
        }
        f.flush()?;
        self.found.bytes += size;
        Ok(())
    }

    /// Refuses to write `size` more bytes of file data past [`Limits::max_payload`], or
    /// unless the destination's file system keeps [`Limits::keep_free`] after them: asked
    /// before every file is created or filled, as others write there too.
    fn room_for(&self, size: u64) -> io::Result<()> {
        if self.found.bytes + size > self.limits.max_payload {
            return Err(invalid(format!(
                "the payload would exceed {} MiB",
                self.limits.max_payload >> 20
            )));
        }
        let st = nix::sys::statvfs::statvfs(self.dest).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!(
                    "cannot check the free space of {}: {e}",
                    self.dest.display()
                ),
            )
        })?;
        // (Both are u64 on 64-bit targets, c_ulong on 32-bit ones.)
        #[allow(clippy::useless_conversion)]
        let free = u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
        let needed = size.saturating_add(self.limits.keep_free);
        if needed > free {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "not enough room to unpack the payload in {}: {} KiB free, {} KiB needed \
                     for the next file and {} KiB kept free for the system; free some space there and try again",
                    self.dest.display(),
                    free >> 10,
                    size.div_ceil(1024),
                    self.limits.keep_free >> 10
                ),
            ));
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<Extracted> {
        // Deepest first, so that a read-only parent is closed last.
        self.dir_modes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (path, mode) in &self.dir_modes {
            // A later entry may have replaced the directory.
            if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                fs::set_permissions(path, fs::Permissions::from_mode(*mode))?;
            }
        }
        Ok(self.found)
    }
}

impl Header {
    fn display(&self, at: u64) -> String {
        format!(
            "entry {:?} (byte {at})",
            String::from_utf8_lossy(&self.name)
        )
    }
}

/// Removes whatever is at `path` (a symlink itself, never what it points to).
pub(crate) fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// zstd, frame after frame (skippable frames skipped) until something else follows.
struct ZstdFrames<R: Read> {
    frame: Option<ruzstd::decoding::StreamingDecoder<Source<R>, ruzstd::decoding::FrameDecoder>>,
}

fn zstd_error(e: impl fmt::Display) -> io::Error {
    invalid(format!("zstd: {e}"))
}

impl<R: Read> ZstdFrames<R> {
    fn new(src: Source<R>) -> io::Result<Self> {
        let frame = ruzstd::decoding::StreamingDecoder::new(src).map_err(zstd_error)?;
        Ok(ZstdFrames { frame: Some(frame) })
    }
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(frame) = self.frame.as_mut() else {
                return Ok(0);
            };
            let n = frame.read(out)?;
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            let mut src = self.frame.take().expect("frame").into_inner();
            loop {
                let head = src.peek(8)?;
                if head.len() == 8 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18] {
                    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
                    src.consume(8);
                    let got = io::copy(&mut (&mut src).take(len.into()), &mut io::sink())?;
                    if got < u64::from(len) {
                        return Err(zstd_error("truncated skippable frame"));
                    }
                    continue;
                }
                if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                    self.frame =
                        Some(ruzstd::decoding::StreamingDecoder::new(src).map_err(zstd_error)?);
                }
                break;
            }
        }
    }
}

/// The legacy lz4 frame of `lz4 -l`, which initramfs-tools uses and the kernel reads:
/// a magic number, then blocks of [u32 LE compressed size][lz4 block], each block 8 MiB
/// decompressed except the last. The magic may appear again between blocks.
struct Lz4Legacy<R> {
    src: R,
    block: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
    len: usize,
    done: bool,
}

const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// LZ4_COMPRESSBOUND of a full block: the largest compressed block allowed.
const LZ4_LEGACY_MAX_CHUNK: usize = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16;

impl<R: Read> Lz4Legacy<R> {
    fn new(mut src: R) -> io::Result<Self> {
        let mut magic = [0u8; 4];
        src.read_exact(&mut magic)?;
        if u32::from_le_bytes(magic) != LZ4_LEGACY_MAGIC {
            return Err(invalid("lz4: not a legacy frame"));
        }
        Ok(Lz4Legacy {
            src,
            block: Vec::new(),
            out: Vec::new(),
            pos: 0,
            len: 0,
            done: false,
        })
    }

    /// Decodes the next block; false at the end of the stream.
    fn next_block(&mut self) -> io::Result<bool> {
        loop {
            let mut size = [0u8; 4];
            let mut got = 0;
            while got < 4 {
                match self.src.read(&mut size[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if got == 0 {
                return Ok(false);
            }
            if got < 4 {
                return Err(invalid("lz4: truncated block size"));
            }
            let size = u32::from_le_bytes(size);
            if size == LZ4_LEGACY_MAGIC {
                continue;
            }
            if size == 0 {
                return Ok(false);
            }
            let size = size as usize;
            if size > LZ4_LEGACY_MAX_CHUNK {
                return Err(invalid(format!(
                    "lz4: block of {size} bytes, more than the format allows"
                )));
            }
            self.block.resize(size, 0);
            self.src.read_exact(&mut self.block).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    invalid("lz4: truncated block")
                } else {
                    e
                }
            })?;
            self.out.resize(LZ4_LEGACY_BLOCK, 0);
            self.len = lz4_flex::block::decompress_into(&self.block, &mut self.out)
                .map_err(|e| invalid(format!("lz4: {e}")))?;
            self.pos = 0;
            return Ok(true);
        }
    }
}

impl<R: Read> Read for Lz4Legacy<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.len {
            if self.done || out.is_empty() || !self.next_block()? {
                self.done = true;
                return Ok(0);
            }
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// A newc archive writer for tests.
    #[derive(Default)]
    pub struct Cpio {
        pub data: Vec<u8>,
        next_ino: u32,
    }

    impl Cpio {
        pub fn entry_ino(&mut self, name: &str, mode: u32, nlink: u32, ino: u32, body: &[u8]) {
            let fields = [
                ino,
                mode,
                0,
                0,
                nlink,
                0,
                body.len() as u32,
                0,
                0,
                0,
                0,
                name.len() as u32 + 1,
                0,
            ];
            self.data.extend_from_slice(b"070701");
            for f in fields {
                self.data.extend_from_slice(format!("{f:08x}").as_bytes());
            }
            self.data.extend_from_slice(name.as_bytes());
            self.data.push(0);
            self.pad();
            self.data.extend_from_slice(body);
            self.pad();
        }

        pub fn entry(&mut self, name: &str, mode: u32, body: &[u8]) {
            self.next_ino += 1;
            let ino = 1000 + self.next_ino;
            self.entry_ino(name, mode, 1, ino, body);
        }

        pub fn file(&mut self, name: &str, mode: u32, body: &[u8]) {
            self.entry(name, S_IFREG | mode, body);
        }

        pub fn dir(&mut self, name: &str, mode: u32) {
            self.entry(name, S_IFDIR | mode, b"");
        }

        pub fn symlink(&mut self, name: &str, target: &str) {
            self.entry(name, S_IFLNK | 0o777, target.as_bytes());
        }

        /// Ends the archive; cpio(1) pads to 512 bytes.
        pub fn trailer(&mut self) -> Vec<u8> {
            self.entry_ino("TRAILER!!!", 0, 1, 0, b"");
            while self.data.len() % 512 != 0 {
                self.data.push(0);
            }
            std::mem::take(&mut self.data)
        }

        fn pad(&mut self) {
            while self.data.len() % 4 != 0 {
                self.data.push(0);
            }
        }
    }

    pub fn payload_archive() -> Vec<u8> {
        let mut c = Cpio::default();
        c.dir(".", 0o755);
        c.dir("./bin", 0o755);
        c.file("./bin/busybox", 0o755, b"not extracted");
        c.dir("./exitrd", 0o755);
        c.file("./exitrd/exitrd", 0o755, b"\x7fELF the binary");
        c.symlink("./exitrd/shutdown", "exitrd");
        c.dir("./exitrd/hooks", 0o755);
        c.dir("./exitrd/hooks/final", 0o700);
        c.file("./exitrd/hooks/final/odd", 0o750, b"abcde");
        c.entry("./exitrd/null", 0o020666, b"");
        c.file("./init", 0o755, b"#!/bin/sh\n");
        c.trailer()
    }

    pub fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("exitrd-initrd-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn detects_every_compression_by_magic() {
        let cases: &[(&[u8], Compression)] = &[
            (b"070701000", Compression::None),
            (b"0707020000", Compression::None),
            (&[0x1f, 0x8b, 8, 0], Compression::Gzip),
            (&[0x28, 0xb5, 0x2f, 0xfd, 0], Compression::Zstd),
            (&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0, 0], Compression::Xz),
            (&[0x02, 0x21, 0x4c, 0x18, 0], Compression::Lz4Legacy),
            (&[0x04, 0x22, 0x4d, 0x18, 0], Compression::Lz4Frame),
            (b"BZh91AY", Compression::Bzip2),
            (&[0x5d, 0, 0, 0x80, 0], Compression::Lzma),
            (&[0x89, b'L', b'Z', b'O', 0], Compression::Lzop),
        ];
        for (head, want) in cases {
            assert_eq!(Compression::detect(head), Some(*want), "{head:?}");
        }
        assert_eq!(Compression::detect(b"070703"), None);
        assert_eq!(Compression::detect(b"\x7fELF"), None);
    }

    #[test]
    fn extracts_only_the_payload_with_modes_symlinks_and_empty_dirs() {
        let d = scratch("basic");
        let got = extract_from(Cursor::new(payload_archive()), &d).unwrap();
        assert_eq!(
            got,
            Extracted {
                parts: vec![Compression::None],
                files: 2,
                hardlinks: 0,
                dirs: 3,
                symlinks: 1,
                skipped: 1,
                bytes: 20,
            }
        );
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["exitrd"], "only the payload directory is written");
        let p = d.join("exitrd");
        assert_eq!(fs::read(p.join("exitrd")).unwrap(), b"\x7fELF the binary");
        assert_eq!(mode(&p.join("exitrd")), 0o755);
        assert_eq!(
            fs::read_link(p.join("shutdown")).unwrap(),
            Path::new("exitrd")
        );
        assert_eq!(fs::read(p.join("hooks/final/odd")).unwrap(), b"abcde");
        assert_eq!(mode(&p.join("hooks/final/odd")), 0o750);
        assert_eq!(mode(&p.join("hooks/final")), 0o700);
        assert!(!p.join("null").exists(), "device nodes are not created");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reads_every_part_across_zero_padding_and_later_archives_win() {
        let mut early = Cpio::default();
        early.dir("kernel", 0o755);
        early.file("kernel/x86/microcode/GenuineIntel.bin", 0o644, b"ucode");
        early.file("exitrd/from-early", 0o644, b"early");
        early.file("exitrd/exitrd", 0o755, b"old");
        let mut image = early.trailer();
        image.extend_from_slice(&[0; 1000]);
        image.extend_from_slice(&payload_archive());
        let d = scratch("parts");
        let got = extract_from(Cursor::new(image), &d).unwrap();
        assert_eq!(got.parts, [Compression::None, Compression::None]);
        assert_eq!(fs::read(d.join("exitrd/from-early")).unwrap(), b"early");
        assert_eq!(
            fs::read(d.join("exitrd/exitrd")).unwrap(),
            b"\x7fELF the binary"
        );
        assert!(!d.join("kernel").exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn hard_links_get_the_data_of_the_last_name_even_outside_the_payload() {
        let mut c = Cpio::default();
        // GNU cpio: every name of the group but the last has size 0.
        c.entry_ino("exitrd/a", S_IFREG | 0o755, 3, 7, b"");
        c.entry_ino("exitrd/b", S_IFREG | 0o755, 3, 7, b"");
        c.entry_ino("usr/bin/c", S_IFREG | 0o755, 3, 7, b"shared data");
        // The same inode number in another group of links, different device: not linked.
        let mut other = Cpio::default();
        other.entry_ino("exitrd/d", S_IFREG | 0o644, 2, 7, b"");
        other.entry_ino("exitrd/e", S_IFREG | 0o644, 2, 7, b"second");
        let mut image = c.trailer();
        image.extend(other.trailer());
        let d = scratch("links");
        let got = extract_from(Cursor::new(image), &d).unwrap();
        assert_eq!((got.files, got.hardlinks), (2, 2));
        let p = d.join("exitrd");
        assert_eq!(fs::read(p.join("a")).unwrap(), b"shared data");
        assert_eq!(fs::read(p.join("b")).unwrap(), b"shared data");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(p.join("a")).unwrap().ino(),
            fs::metadata(p.join("b")).unwrap().ino()
        );
        assert_eq!(fs::read(p.join("d")).unwrap(), b"second");
        assert_eq!(fs::read(p.join("e")).unwrap(), b"second");
        assert_ne!(
            fs::metadata(p.join("a")).unwrap().ino(),
            fs::metadata(p.join("d")).unwrap().ino(),
            "inode numbers restart with each archive"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_path_traversal_and_writing_through_symlinks() {
        for name in ["exitrd/../etc/passwd", "/exitrd/x", "../exitrd/x"] {
            let mut c = Cpio::default();
            c.file(name, 0o644, b"evil");
            let d = scratch("traversal");
            let err = extract_from(Cursor::new(c.trailer()), &d).unwrap_err();
            assert!(err.to_string().contains("unsafe path"), "{name}: {err}");
            fs::remove_dir_all(&d).unwrap();
        }
        let d = scratch("through");
        let outside = d.join("outside");
        fs::create_dir_all(&outside).unwrap();
        let dest = d.join("dest");
        fs::create_dir_all(&dest).unwrap();
        let mut c = Cpio::default();
        c.symlink("exitrd/lib", outside.to_str().unwrap());
        c.file("exitrd/lib/x", 0o644, b"evil");
        let err = extract_from(Cursor::new(c.trailer()), &dest).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        assert!(!outside.join("x").exists());
        // A symlink replaced by a file is replaced, never followed.
        let mut c = Cpio::default();
        c.symlink("exitrd/f", outside.join("victim").to_str().unwrap());
        c.file("exitrd/f", 0o644, b"data");
        extract_from(Cursor::new(c.trailer()), &dest).unwrap();
        assert!(!outside.join("victim").exists());
        assert_eq!(fs::read(dest.join("exitrd/f")).unwrap(), b"data");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_hard_link_group_never_writes_through_a_directory_later_made_a_symlink() {
        let d = scratch("linkdir");
        let outside = d.join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("f"), b"precious").unwrap();
        let dest = d.join("dest");
        fs::create_dir_all(&dest).unwrap();
        let mut c = Cpio::default();
        c.dir("exitrd", 0o755);
        c.dir("exitrd/d", 0o755);
        c.entry_ino("exitrd/d/f", S_IFREG | 0o644, 2, 9, b"");
        c.symlink("exitrd/d", outside.to_str().unwrap());
        c.entry_ino("usr/f", S_IFREG | 0o644, 2, 9, b"overwritten");
        let err = extract_from(Cursor::new(c.trailer()), &dest).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        assert_eq!(fs::read(outside.join("f")).unwrap(), b"precious");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn empty_images_unaligned_archives_and_checksummed_headers() {
        let d = scratch("odd");
        for image in [Vec::new(), vec![0; 4096]] {
            let err = extract_from(Cursor::new(image), &d).unwrap_err();
            assert!(err.to_string().contains("empty"), "{err}");
        }
        // The kernel reads an uncompressed archive only at a 4-byte boundary.
        let mut image = vec![0; 3];
        image.extend(payload_archive());
        let err = extract_from(Cursor::new(image), &d).unwrap_err();
        assert!(err.to_string().contains("unaligned byte 3"), "{err}");
        // "070702" (with a checksum field) reads like "070701".
        let mut crc = payload_archive();
        let mut i = 0;
        while let Some(p) = crc[i..].windows(6).position(|w| w == b"070701") {
            crc[i + p + 5] = b'2';
            i += p + 6;
        }
        let got = extract_from(Cursor::new(crc), &d).unwrap();
        assert_eq!(got.files, 2);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn truncated_or_corrupt_input_is_an_error_never_a_panic() {
        let whole = payload_archive();
        let d = scratch("truncated");
        // Cut everywhere before the trailer: every cut must fail cleanly.
        let trailer_at = whole.windows(10).position(|w| w == TRAILER).unwrap() - HEADER_LEN;
        // (Every byte of the first header, then a stride: each run creates files.)
        for cut in (1..trailer_at + HEADER_LEN).filter(|c| *c < 130 || c % 11 == 0) {
            let _ = fs::remove_dir_all(d.join("exitrd"));
            let err = extract_from(Cursor::new(whole[..cut].to_vec()), &d).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("truncated")
                    || msg.contains("bad cpio header")
                    || (cut < 6 && msg.contains("not an initramfs image")),
                "cut at {cut}: {msg}"
            );
        }
        // Flipped bytes: an error or a (different) extraction, never a panic.
        for i in (0..trailer_at).step_by(7) {
            let mut bad = whole.clone();
            bad[i] ^= 0x5a;
            let _ = fs::remove_dir_all(d.join("exitrd"));
            let _ = extract_from(Cursor::new(bad), &d);
        }
        let err = extract_from(Cursor::new(b"\x7fELF\x02\x01".to_vec()), &d).unwrap_err();
        assert!(err.to_string().contains("not an initramfs image"), "{err}");
        let mut huge = Cpio::default();
        huge.entry("exitrd/x", S_IFREG | 0o644, b"");
        let mut bytes = huge.trailer();
        // namesize field of the first header, made absurd
        bytes[94..102].copy_from_slice(b"7fffffff");
        let err = extract_from(Cursor::new(bytes), &d).unwrap_err();
        assert!(err.to_string().contains("name size"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    fn small(f: impl FnOnce(&mut Limits)) -> Limits {
        let mut l = Limits::default();
        f(&mut l);
        l
    }

    #[test]
    fn the_read_bound_counts_data_outside_the_payload_and_zero_padding() {
        let d = scratch("maxread");
        let limits = small(|l| l.max_read = 64 << 10);
        // Data read past: the payload itself is 3 bytes.
        let mut c = Cpio::default();
        c.file("usr/lib/firmware/big.bin", 0o644, &[7; 128 << 10]);
        c.file("exitrd/exitrd", 0o755, b"bin");
        let image = c.trailer();
        extract_from(Cursor::new(image.clone()), &d).unwrap();
        let _ = fs::remove_dir_all(d.join("exitrd"));
        let err = extract_from_with(Cursor::new(image), &d, &limits).unwrap_err();
        assert!(err.to_string().contains("read and unpacked"), "{err}");
        // Zero padding between parts, and zero padding without end.
        let mut image = payload_archive();
        image.extend_from_slice(&[0; 128 << 10]);
        image.extend(payload_archive());
        let _ = fs::remove_dir_all(d.join("exitrd"));
        extract_from(Cursor::new(image.clone()), &d).unwrap();
        let err = extract_from_with(Cursor::new(image), &d, &limits).unwrap_err();
        assert!(err.to_string().contains("read and unpacked"), "{err}");
        let endless = Cursor::new(payload_archive()).chain(io::repeat(0));
        let err = extract_from_with(endless, &d, &limits).unwrap_err();
        assert!(err.to_string().contains("read and unpacked"), "{err}");
        // A compressed part counts what it unpacks, not its size in the image.
        let mut c = Cpio::default();
        c.file("usr/share/zeros", 0o644, &[0; 1 << 20]);
        c.file("exitrd/exitrd", 0o755, b"bin");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&c.trailer()).unwrap();
        let image = gz.finish().unwrap();
        assert!(image.len() < 16 << 10, "{} bytes", image.len());
        let _ = fs::remove_dir_all(d.join("exitrd"));
        extract_from(Cursor::new(image.clone()), &d).unwrap();
        let err = extract_from_with(Cursor::new(image), &d, &limits).unwrap_err();
        assert!(err.to_string().contains("read and unpacked"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_entry_bound_counts_every_header() {
        let d = scratch("maxentries");
        let mut c = Cpio::default();
        for i in 0..100 {
            c.file(&format!("usr/share/empty-{i}"), 0o644, b"");
        }
        c.file("exitrd/exitrd", 0o755, b"bin");
        let image = c.trailer();
        // 102 headers with the trailer.
        let got = extract_from_with(
            Cursor::new(image.clone()),
            &d,
            &small(|l| l.max_entries = 102),
        )
        .unwrap();
        assert_eq!(got.files, 1);
        let _ = fs::remove_dir_all(d.join("exitrd"));
        let err =
            extract_from_with(Cursor::new(image), &d, &small(|l| l.max_entries = 101)).unwrap_err();
        assert!(err.to_string().contains("more than 101 entries"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_payload_bound_counts_the_bytes_written() {
        let d = scratch("maxpayload");
        // payload_archive() writes 20 bytes of file data.
        extract_from_with(
            Cursor::new(payload_archive()),
            &d,
            &small(|l| l.max_payload = 20),
        )
        .unwrap();
        let _ = fs::remove_dir_all(d.join("exitrd"));
        let err = extract_from_with(
            Cursor::new(payload_archive()),
            &d,
            &small(|l| l.max_payload = 19),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("the payload would exceed"),
            "{err}"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_to_fill_the_destination_file_system() {
        let d = scratch("room");
        // More room kept free than any file system has: the first file is refused.
        let err = extract_from_with(
            Cursor::new(payload_archive()),
            &d,
            &small(|l| l.keep_free = u64::MAX / 2),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
        let msg = err.to_string();
        assert!(msg.contains("not enough room"), "{msg}");
        assert!(msg.contains(d.to_str().unwrap()), "{msg}");
        assert!(msg.contains("free some space"), "{msg}");
        assert!(!d.join("exitrd/exitrd").exists(), "nothing written");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_image_without_the_payload_extracts_nothing() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!/bin/sh");
        let d = scratch("nopayload");
        let got = extract_from(Cursor::new(c.trailer()), &d).unwrap();
        assert!(!got.found());
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_compressions_it_cannot_read_by_name() {
        let mut image = Cpio::default().trailer();
        image.clear();
        let mut early = Cpio::default();
        early.file("kernel/x86/microcode/AuthenticAMD.bin", 0o644, b"u");
        image.extend(early.trailer());
        image.extend_from_slice(b"BZh91AY&SY");
        let d = scratch("bzip2");
        let err = extract_from(Cursor::new(image), &d).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        assert!(err.to_string().contains("bzip2-compressed"), "{err}");
        assert!(err.to_string().contains("COMPRESS=zstd"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    /// The legacy lz4 frame, written by hand with lz4_flex's block compressor: two
    /// blocks (the first a full 8 MiB), the magic repeated between them.
    #[test]
    fn reads_the_legacy_lz4_frame_across_blocks() {
        let mut c = Cpio::default();
        let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
        c.file("exitrd/big", 0o644, &big);
        c.file("exitrd/exitrd", 0o755, b"bin");
        let plain = c.trailer();
        let mut image = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for (i, chunk) in plain.chunks(LZ4_LEGACY_BLOCK).enumerate() {
            if i == 1 {
                image.extend_from_slice(&LZ4_LEGACY_MAGIC.to_le_bytes());
            }
            let block = lz4_flex::block::compress(chunk);
            image.extend_from_slice(&(block.len() as u32).to_le_bytes());
            image.extend_from_slice(&block);
        }
        let d = scratch("lz4");
        let got = extract_from(Cursor::new(image.clone()), &d).unwrap();
        assert_eq!(got.parts, [Compression::Lz4Legacy]);
        assert_eq!(fs::read(d.join("exitrd/big")).unwrap(), big);
        // Truncated in the middle of a block.
        let _ = fs::remove_dir_all(d.join("exitrd"));
        let err = extract_from(Cursor::new(image[..image.len() / 2].to_vec()), &d).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reads_a_gzip_main_archive_after_an_early_one() {
        let mut early = Cpio::default();
        early.file("kernel/x86/microcode/GenuineIntel.bin", 0o644, b"ucode");
        let mut image = early.trailer();
        // A compressed part may start anywhere after zero padding.
        image.extend_from_slice(&[0; 3]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&payload_archive()).unwrap();
        image.extend(gz.finish().unwrap());
        let d = scratch("gzip");
        let got = extract_from(Cursor::new(image.clone()), &d).unwrap();
        assert_eq!(got.parts, [Compression::None, Compression::Gzip]);
        assert_eq!(
            fs::read_link(d.join("exitrd/shutdown")).unwrap(),
            Path::new("exitrd")
        );
        let _ = fs::remove_dir_all(d.join("exitrd"));
        let err = extract_from(Cursor::new(image[..image.len() - 40].to_vec()), &d).unwrap_err();
        assert!(
            err.to_string().contains("truncated") || err.to_string().contains("gzip"),
            "{err}"
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
