#![no_main]
//! The configuration parser must never panic on any file or kernel command line.

use exitrd::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut cfg = Config::default();
    let _ = cfg.apply_file(&text);
    let _ = cfg.apply_cmdline(&text);
});
