#![no_main]
//! The configuration parsers must never panic on any file or kernel command line, and
//! the command line must never weaken what the file did not allow it to (`CMDLINE_ALLOW`):
//! no root shell (`exitrd.break=shell`), no kept keys (`exitrd.wipe_keys=`), no change
//! to the allow list itself.
//!
//! The input is the file's text, a NUL, then the command line; without a NUL the same
//! text is both.

use exitrd::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (file, cmdline) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, data),
    };
    let mut cfg = Config::default();
    let _ = cfg.apply_file(&String::from_utf8_lossy(file));
    let before = cfg.clone();
    let _ = cfg.apply_cmdline(&String::from_utf8_lossy(cmdline));

    let allowed = |key: &str| before.cmdline_allow.iter().any(|k| k == key);
    assert_eq!(
        cfg.cmdline_allow, before.cmdline_allow,
        "allow list changed"
    );
    if !allowed("break") {
        assert!(
            !cfg.break_shell || before.break_shell,
            "a shell from the command line without CMDLINE_ALLOW=break"
        );
    }
    if !allowed("wipe_keys") {
        assert_eq!(
            cfg.wipe_keys, before.wipe_keys,
            "wipe_keys changed from the command line without CMDLINE_ALLOW=wipe_keys"
        );
    }
});
