#![no_main]
//! Reading an initramfs image (`exitrd prepare --from`) must never panic, hang, or write
//! anywhere but below the payload directory of its destination, whatever the image holds.
//!
//! The first byte of the input says what the rest is:
//!
//! - `g`, `z`, `x`, `l`: a cpio archive, which the target compresses with gzip, zstd, xz
//!   or lz4 (legacy frame) before reading it, so that the cpio reader behind each
//!   decoder sees the fuzzer's archives and each decoder sees valid streams of any data;
//! - anything else: a whole image as it is on disk (early uncompressed archives, zero
//!   padding, then a compressed one, each compression recognised by its magic), so the
//!   decoders also see broken streams.
//!
//! `fuzz/corpus/initrd/` holds small images of each kind, compressed by the host tools
//! (`fuzz/make-corpus`).

use exitrd::initrd::{extract_from, PAYLOAD_DIR};
use libfuzzer_sys::fuzz_target;
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh directory name for one run, in TMPDIR (`scripts/fuzz` points it at a directory
/// of its own, on a tmpfs when there is one, and removes it at the end).
fn scratch() -> PathBuf {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("exitrd-fuzz-initrd-{}-{n}", std::process::id()))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

/// The legacy lz4 frame of `lz4 -l`: the magic, then [u32 LE size][block] per 8 MiB.
fn lz4_legacy(data: &[u8]) -> Vec<u8> {
    let mut out = 0x184c_2102u32.to_le_bytes().to_vec();
    for chunk in data.chunks(8 << 20) {
        let block = lz4_flex::block::compress(chunk);
        out.extend_from_slice(&(block.len() as u32).to_le_bytes());
        out.extend_from_slice(&block);
    }
    out
}

/// xz's variable-length integers: 7 bits a byte, low bits first.
fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn pad4(out: &mut Vec<u8>, from: usize) {
    while !(out.len() - from).is_multiple_of(4) {
        out.push(0);
    }
}

/// An xz stream of one block, without a check, whose LZMA2 data is a run of
/// uncompressed chunks (what `xz` writes for incompressible data).
fn xz(data: &[u8]) -> Vec<u8> {
    let flags = [0u8, 0]; // no check
    let mut out = vec![0xfd, b'7', b'z', b'X', b'Z', 0];
    out.extend_from_slice(&flags);
    out.extend_from_slice(&crc32fast::hash(&flags).to_le_bytes());

    let block = out.len();
    // Header size / 4 - 1; block flags: one filter, no sizes; LZMA2 (0x21) with one
    // property byte, the smallest dictionary.
    out.extend_from_slice(&[2, 0, 0x21, 1, 0]);
    pad4(&mut out, block);
    let crc = crc32fast::hash(&out[block..]);
    out.extend_from_slice(&crc.to_le_bytes());
    let header_len = out.len() - block;
    let chunks = out.len();
    for (i, chunk) in data.chunks(64 << 10).enumerate() {
        // 1: uncompressed, dictionary reset; 2: uncompressed.
        out.push(if i == 0 { 1 } else { 2 });
        out.extend_from_slice(&((chunk.len() - 1) as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out.push(0); // end of the LZMA2 data
    let unpadded = header_len + out.len() - chunks;
    pad4(&mut out, block);

    let index = out.len();
    out.push(0);
    varint(&mut out, 1);
    varint(&mut out, unpadded as u64);
    varint(&mut out, data.len() as u64);
    pad4(&mut out, index);
    let crc = crc32fast::hash(&out[index..]);
    out.extend_from_slice(&crc.to_le_bytes());
    let backward = ((out.len() - index) / 4 - 1) as u32;

    let mut footer = backward.to_le_bytes().to_vec();
    footer.extend_from_slice(&flags);
    out.extend_from_slice(&crc32fast::hash(&footer).to_le_bytes());
    out.extend_from_slice(&footer);
    out.extend_from_slice(b"YZ");
    out
}

/// Removes a tree even where the image made directories without write permission (which
/// stops an unprivileged fuzzer's `remove_dir_all`).
fn remove(path: &Path) {
    if fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    fn open_up(dir: &Path) {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                open_up(&e.path());
            }
        }
    }
    open_up(path);
    fs::remove_dir_all(path).expect("removing the scratch directory");
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("listing the scratch directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let image = match kind {
        b'g' => gzip(rest),
        b'z' => zstd(rest),
        b'x' => xz(rest),
        b'l' => lz4_legacy(rest),
        _ => rest.to_vec(),
    };
    let base = scratch();
    let dest = base.join("dest");
    fs::create_dir_all(&dest).expect("scratch directory");

    let got = extract_from(Cursor::new(image), &dest);
    if let Ok(found) = &got {
        assert!(!found.parts.is_empty(), "{found:?}");
        let _ = found.to_string();
    }
    // Nothing next to the destination, nothing in it but the payload directory.
    assert_eq!(names(&base), ["dest"], "written outside the destination");
    let written = names(&dest);
    assert!(
        written.is_empty() || written == [PAYLOAD_DIR],
        "written outside the payload directory: {written:?}"
    );
    remove(&base);
});
