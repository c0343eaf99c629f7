//! What the run is told: systemd's arguments, the bound they set, `/exitrd.conf` and the
//! kernel command line, and the test suite's fault switches.

use super::deadline;
use super::reboot::Verb;
use crate::config::{self, Config};
use crate::say;
use std::io;
use std::path::Path;
use std::time::Duration;

/// Where the payload lives after the pivot: the root of the exitrd tmpfs.
const CONFIG_FILE: &str = "/exitrd.conf";
/// Test-only fault switches (`exitrd.fault=`) are honoured only when this file is in the
/// payload, which no package ships: the VM tests put it there. Switches may also be
/// written into it (words as on the command line), so that a test sets them on a booted
/// system and its guest boots as every other run on the same disks does.
const FAULTS_ALLOWED_FILE: &str = "/test-faults-allowed";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub verb: Option<Verb>,
    pub verb_word: String,
    pub timeout: Option<Duration>,
}

/// argv after the program name: the verb, then systemd's options. Unknown options are
/// ignored so a newer systemd never breaks a shutdown.
pub fn parse_args(args: &[String]) -> Args {
    let verb_word = args.first().cloned().unwrap_or_default();
    let timeout = args
        .iter()
        .skip(1)
        .filter_map(|a| a.strip_prefix("--timeout="))
        .find_map(config::parse_duration);
    Args {
        verb: Verb::parse(&verb_word),
        verb_word,
        timeout,
    }
}

/// The bound for the whole run: the configured timeout, but inside systemd's own.
pub fn budget(cfg: &Config, systemd_timeout: Option<Duration>) -> Duration {
    let within_systemd = systemd_timeout
        .map(|t| t.saturating_sub(deadline::RESERVE))
        .filter(|t| !t.is_zero())
        .unwrap_or(cfg.timeout);
    cfg.timeout.min(within_systemd)
}

/// Test-only faults from the kernel command line and the switch file, see
/// [`FAULTS_ALLOWED_FILE`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Faults {
    pub panic: bool,
    pub abort: bool,
    pub hang: bool,
    pub verb: Option<String>,
}

fn faults(cmdline: &str) -> Faults {
    let mut f = Faults::default();
    for word in cmdline.split_whitespace() {
        match word.strip_prefix("exitrd.fault=") {
            Some("panic") => f.panic = true,
            Some("abort") => f.abort = true,
            Some("hang") => f.hang = true,
            Some(v) => {
                if let Some(verb) = v.strip_prefix("verb:") {
                    f.verb = Some(verb.to_string());
                }
            }
            None => {}
        }
    }
    f
}

pub fn load_config(cmdline: &str) -> Config {
    let mut cfg = Config::default();
    match std::fs::read(CONFIG_FILE) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            for p in cfg.apply_file(&text) {
                say!("{CONFIG_FILE}: {p}; ignored");
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => say!("{CONFIG_FILE}: {e}; using the defaults"),
    }
    for p in cfg.apply_cmdline(cmdline) {
        say!("{p}; ignored");
    }
    cfg
}

/// The fault switches of `cmdline` and of the switch file, if the payload has that file
/// (see [`FAULTS_ALLOWED_FILE`]).
pub fn test_faults(cmdline: &str) -> Faults {
    switch_file_faults(Path::new(FAULTS_ALLOWED_FILE), cmdline)
}

fn switch_file_faults(file: &Path, cmdline: &str) -> Faults {
    match std::fs::read(file) {
        Ok(bytes) => {
            let words = String::from_utf8_lossy(&bytes);
            gated_faults(true, &format!("{cmdline} {words}"))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => gated_faults(false, cmdline),
        // There but unreadable: allowed, with the command line's switches only.
        Err(_) => gated_faults(true, cmdline),
    }
}

fn gated_faults(allowed: bool, cmdline: &str) -> Faults {
    if allowed {
        faults(cmdline)
    } else {
        if cmdline.contains("exitrd.fault=") {
            say!("exitrd.fault= ignored: fault injection is for the test suite only");
        }
        Faults::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn systemd_argv_as_seen_in_a_trixie_vm() {
        let a = parse_args(&strings(&[
            "poweroff",
            "--timeout=90000000us",
            "--log-level",
            "info",
            "--log-target=kmsg",
            "--log-color",
            "--exit-code=0",
        ]));
        assert_eq!(a.verb, Some(Verb::PowerOff));
        assert_eq!(a.timeout, Some(Duration::from_secs(90)));
    }

    #[test]
    fn unknown_verb_and_missing_options() {
        let a = parse_args(&strings(&["sing", "--future-option=1"]));
        assert_eq!(a.verb, None);
        assert_eq!(a.verb_word, "sing");
        assert_eq!(a.timeout, None);
        assert_eq!(parse_args(&[]).verb, None);
    }

    #[test]
    fn budget_stays_inside_systemds_timeout() {
        let cfg = Config::default();
        assert_eq!(budget(&cfg, None), Duration::from_secs(60));
        assert_eq!(
            budget(&cfg, Some(Duration::from_secs(90))),
            Duration::from_secs(60)
        );
        assert_eq!(
            budget(&cfg, Some(Duration::from_secs(30))),
            Duration::from_secs(25)
        );
        assert_eq!(
            budget(&cfg, Some(Duration::from_secs(2))),
            Duration::from_secs(60)
        );
        let short = Config {
            timeout: Duration::from_secs(20),
            ..Config::default()
        };
        assert_eq!(
            budget(&short, Some(Duration::from_secs(90))),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn fault_switches() {
        assert_eq!(faults("root=/dev/vda quiet"), Faults::default());
        let f = faults("exitrd.fault=panic exitrd.fault=verb:sing");
        assert!(f.panic);
        assert!(!f.abort);
        assert!(faults("exitrd.fault=abort").abort);
        assert!(faults("exitrd.fault=hang").hang);
        assert_eq!(f.verb.as_deref(), Some("sing"));
    }

    /// Without the payload's switch file no fault is honoured, the hang included: on a
    /// real machine `exitrd.fault=hang` must not wedge the shutdown.
    #[test]
    fn fault_switches_need_the_switch_file() {
        let cmdline =
            "exitrd.fault=hang exitrd.fault=panic exitrd.fault=abort exitrd.fault=verb:sing";
        assert_eq!(gated_faults(false, cmdline), Faults::default());
        let allowed = gated_faults(true, cmdline);
        assert!(allowed.hang && allowed.panic && allowed.abort);
    }

    /// The switch file's words count as the command line's do; without the file, neither.
    #[test]
    fn fault_switches_written_into_the_switch_file() {
        let dir = std::env::temp_dir().join(format!("exitrd-faults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("test-faults-allowed");
        assert_eq!(
            switch_file_faults(&file, "exitrd.fault=panic"),
            Faults::default()
        );
        std::fs::write(&file, "").unwrap();
        assert!(switch_file_faults(&file, "exitrd.fault=panic").panic);
        std::fs::write(&file, "exitrd.fault=abort\nexitrd.fault=verb:sing\n").unwrap();
        let f = switch_file_faults(&file, "quiet");
        assert!(f.abort && !f.panic && !f.hang);
        assert_eq!(f.verb.as_deref(), Some("sing"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
