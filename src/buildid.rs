//! The GNU build ID of an ELF executable: the linker's hash of the whole output, kept in
//! a `.note.gnu.build-id` note near the start of the file (strip leaves it in place).
//! Two binaries with the same build ID are the same build, which is learnt from one page
//! of each file, not by reading both (2 MiB each) to the end.
//!
//! Only what exitrd ships is parsed: 64-bit little-endian ELF (x86_64). Anything else,
//! or a binary linked without a build ID, has none, and callers compare bytes instead.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;
/// Notes larger than this are not build-ID notes of a sane binary.
const MAX_NOTES: u64 = 64 * 1024;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The build ID (lower-case hex) found in the notes of one PT_NOTE segment.
pub fn from_notes(notes: &[u8]) -> Option<String> {
    let mut at = 0usize;
    while at + 12 <= notes.len() {
        let namesz = u32_at(notes, at)? as usize;
        let descsz = u32_at(notes, at + 4)? as usize;
        let kind = u32_at(notes, at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(namesz.checked_next_multiple_of(4)?)?;
        let next = desc_at.checked_add(descsz.checked_next_multiple_of(4)?)?;
        let desc = notes.get(desc_at..desc_at.checked_add(descsz)?)?;
        if kind == NT_GNU_BUILD_ID && notes.get(name_at..name_at + namesz)? == b"GNU\0" {
            return (!desc.is_empty()).then(|| desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        at = next;
    }
    None
}

/// The build ID of the ELF file `path`, `Ok(None)` when it has none (or is no 64-bit
/// little-endian ELF file).
pub fn of_file(path: &Path) -> io::Result<Option<String>> {
    let f = File::open(path)?;
    let mut ehdr = [0u8; 64];
    if f.read_exact_at(&mut ehdr, 0).is_err() || ehdr[..4] != *b"\x7fELF" {
        return Ok(None);
    }
    // EI_CLASS 2: 64-bit; EI_DATA 1: little-endian.
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Ok(None);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (u64_at(&ehdr, 32), u16_at(&ehdr, 54), u16_at(&ehdr, 56))
    else {
        return Ok(None);
    };
    if phentsize < 56 || phnum == 0 {
        return Ok(None);
    }
    let mut phdrs = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
    f.read_exact_at(&mut phdrs, phoff)?;
    for ph in phdrs.chunks_exact(usize::from(phentsize)) {
        let (Some(kind), Some(offset), Some(size)) = (u32_at(ph, 0), u64_at(ph, 8), u64_at(ph, 32))
        else {
            continue;
        };
        if kind != PT_NOTE || size > MAX_NOTES {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        f.read_exact_at(&mut notes, offset)?;
        if let Some(id) = from_notes(&notes) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((name.len() as u32).to_le_bytes());
        v.extend((desc.len() as u32).to_le_bytes());
        v.extend(kind.to_le_bytes());
        v.extend(name);
        v.resize(v.len().next_multiple_of(4), 0);
        v.extend(desc);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }

    #[test]
    fn the_build_id_note_is_found_after_other_notes() {
        let mut notes = note(
            b"GNU\0",
            1,
            &[0, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
        );
        notes.extend(note(b"GNU\0", NT_GNU_BUILD_ID, &[0x7c, 0x47, 0xdf, 0x01]));
        assert_eq!(from_notes(&notes).as_deref(), Some("7c47df01"));
        // Another vendor's note of type 3 is not a GNU build ID.
        assert_eq!(from_notes(&note(b"Go\0\0", NT_GNU_BUILD_ID, &[1, 2])), None);
        // Truncated notes and sizes that point past the end give none, never a panic.
        let whole = note(b"GNU\0", NT_GNU_BUILD_ID, &[1, 2, 3, 4, 5, 6, 7, 8]);
        for cut in 0..whole.len() {
            assert_eq!(from_notes(&whole[..cut]), None, "cut at {cut}");
        }
        let mut huge = whole.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(from_notes(&huge), None);
    }

    /// The test binary itself: built by the same toolchain as exitrd, with a build ID
    /// (`readelf -n` shows the same). A file that is no ELF has none.
    #[test]
    fn a_real_executable_has_one_and_other_files_none() {
        let me = std::env::current_exe().unwrap();
        let id = of_file(&me)
            .unwrap()
            .expect("the test binary has a build ID");
        assert!(
            id.len() >= 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        assert_eq!(of_file(&me).unwrap().as_deref(), Some(id.as_str()));
        let other = std::env::temp_dir().join(format!("exitrd-buildid-{}", std::process::id()));
        std::fs::write(&other, "#!/bin/sh\n").unwrap();
        assert_eq!(of_file(&other).unwrap(), None);
        let _ = std::fs::remove_file(&other);
    }
}
