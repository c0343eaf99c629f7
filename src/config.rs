//! Configuration: `/etc/exitrd.conf` (copied into the payload as `exitrd.conf` when the
//! initramfs is built, so the shutdown never reads the old root), overridden by `exitrd.*`
//! parameters on the kernel command line.
//!
//! The file uses the shell-variable style of initramfs-tools' own configuration
//! (`KEY=value`, `#` comments, optional quotes) so admins edit it like
//! `/etc/initramfs-tools/initramfs.conf`. Nothing here is ever fatal: an unknown key or a
//! bad value is reported and the default kept, because a shutdown must always complete.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Bound for the whole shutdown run (also capped by systemd's `--timeout`).
    pub timeout: Duration,
    /// Bound for one operation: an unmount, an ioctl, a hook.
    pub step_timeout: Duration,
    /// Time processes get between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Suspend and wipe the key of dm-crypt devices that could not be closed.
    pub wipe_keys: bool,
    pub debug: bool,
    /// `exitrd.break=shell`: start a shell before the final reboot, if one is in the payload.
    pub break_shell: bool,
    /// How long that shell may run before the shutdown goes on.
    pub shell_timeout: Duration,
    /// Settings that weaken security (`break`, `wipe_keys`) which the kernel command line
    /// may still change (`CMDLINE_ALLOW=` in the file): anyone at the boot loader can edit
    /// the command line, so by default it cannot open a root shell or keep keys.
    pub cmdline_allow: Vec<String>,
    /// Write the record of each shutdown to a plain /boot or the ESP (`RECORD=`).
    pub record: bool,
    /// Where `exitrd status --repair` (exitrd.service) writes the node_exporter textfile
    /// about the last shutdown (`NODE_EXPORTER_TEXTFILE=`); none by default.
    pub node_exporter_textfile: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timeout: Duration::from_secs(60),
            step_timeout: Duration::from_secs(10),
            kill_grace: Duration::from_secs(3),
            wipe_keys: true,
            debug: false,
            break_shell: false,
            shell_timeout: Duration::from_secs(300),
            cmdline_allow: Vec::new(),
            record: true,
            node_exporter_textfile: None,
        }
    }
}

/// The accepted range of each duration: outside it a value is refused and the default
/// kept (a step timeout of 0 would abandon every step, the first sync included; one of
/// an hour would let a single stuck operation hold the machine that long).
const RANGES: [(&str, Duration, Duration); 4] = [
    ("timeout", Duration::from_secs(5), Duration::from_secs(1800)),
    (
        "step_timeout",
        Duration::from_secs(1),
        Duration::from_secs(300),
    ),
    ("kill_grace", Duration::ZERO, Duration::from_secs(60)),
    (
        "shell_timeout",
        Duration::from_secs(10),
        Duration::from_secs(3600),
    ),
];

/// Keys whose change from the kernel command line weakens security, and the value that
/// does it (`None`: any value).
const UNSAFE_ON_CMDLINE: [(&str, Option<&str>); 3] = [
    ("break", Some("shell")),
    ("wipe_keys", None),
    ("cmdline_allow", None),
];

fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn in_range(key: &str, d: Duration) -> Result<Duration, String> {
    let Some(&(_, lo, hi)) = RANGES.iter().find(|(k, _, _)| *k == key) else {
        return Ok(d);
    };
    if d < lo || d > hi {
        return Err(format!(
            "{key} {} is out of range ({} to {}); keeping the default",
            show(d),
            show(lo),
            show(hi)
        ));
    }
    Ok(d)
}

pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "y" | "yes" | "true" | "on" => Some(true),
        "0" | "n" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// Seconds, optionally with a unit: `30`, `30s`, `500ms`, `2min`.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits.parse().ok()?;
    match unit.trim() {
        "" | "s" | "sec" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "us" => Some(Duration::from_micros(n)),
        "m" | "min" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

impl Config {
    /// Sets one key; keys are matched case-insensitively with `-` and `_` alike, so
    /// `TIMEOUT=` in the file and `exitrd.timeout=` on the command line are the same.
    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let key = key.to_ascii_lowercase().replace('-', "_");
        let bad = || format!("bad value {value:?} for {key}");
        let duration = || in_range(&key, parse_duration(value).ok_or_else(bad)?);
        match key.as_str() {
            "timeout" => self.timeout = duration()?,
            "step_timeout" => self.step_timeout = duration()?,
            "kill_grace" => self.kill_grace = duration()?,
            "shell_timeout" => self.shell_timeout = duration()?,
            "cmdline_allow" => {
                let keys: Vec<String> = value
                    .split([' ', ','])
                    .filter(|k| !k.is_empty())
                    .map(|k| k.to_ascii_lowercase().replace('-', "_"))
                    .collect();
                if let Some(k) = keys
                    .iter()
                    .find(|k| !matches!(k.as_str(), "break" | "wipe_keys"))
                {
                    return Err(format!("cmdline_allow: {k:?} is not break or wipe_keys"));
                }
                self.cmdline_allow = keys;
            }
            "wipe_keys" => self.wipe_keys = parse_bool(value).ok_or_else(bad)?,
            "debug" => self.debug = parse_bool(value).ok_or_else(bad)?,
            "record" => self.record = parse_bool(value).ok_or_else(bad)?,
            "node_exporter_textfile" => {
                if !(value.is_empty() || value.starts_with('/')) {
                    return Err(format!("{key}: {value:?} is not an absolute path"));
                }
                self.node_exporter_textfile = (!value.is_empty()).then(|| value.to_string());
            }
            "break" => match value {
                "shell" => self.break_shell = true,
                "" | "no" | "none" => self.break_shell = false,
                _ => return Err(bad()),
            },
            _ => return Err(format!("unknown key {key:?}")),
        }
        Ok(())
    }

    /// Applies a configuration file's text. Returns one message per problem, with its line.
    pub fn apply_file(&mut self, text: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                problems.push(format!("line {}: expected KEY=value, got {line:?}", i + 1));
                continue;
            };
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            if let Err(e) = self.set(key.trim(), value) {
                problems.push(format!("line {}: {e}", i + 1));
            }
        }
        problems
    }

    /// Applies `exitrd.KEY[=VALUE]` words of a kernel command line; a bare boolean key
    /// (`exitrd.debug`) means yes.
    pub fn apply_cmdline(&mut self, cmdline: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for word in cmdline.split_whitespace() {
            let Some(setting) = word.strip_prefix("exitrd.") else {
                continue;
            };
            let (key, value) = setting.split_once('=').unwrap_or((setting, "yes"));
            if key == "fault" {
                continue; // test-only switch, read by the fault module
            }
            let norm = key.to_ascii_lowercase().replace('-', "_");
            let unsafe_change = UNSAFE_ON_CMDLINE
                .iter()
                .any(|(k, v)| *k == norm && v.is_none_or(|v| v == value));
            if unsafe_change && !self.cmdline_allow.contains(&norm) {
                problems.push(format!(
                    "kernel command line {word:?}: not allowed: anyone at the boot loader can \
                     set it; to allow it, put CMDLINE_ALLOW={norm} in /etc/exitrd.conf"
                ));
                continue;
            }
            if let Err(e) = self.set(key, value) {
                problems.push(format!("kernel command line {word:?}: {e}"));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_command_line() {
        let mut c = Config::default();
        let problems = c.apply_file(
            "# exitrd settings\nTIMEOUT=45\nSTEP_TIMEOUT=\"5s\"\nWIPE_KEYS=no\n\nKILL_GRACE='1500ms'\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.timeout, Duration::from_secs(45));
        assert_eq!(c.step_timeout, Duration::from_secs(5));
        assert_eq!(c.kill_grace, Duration::from_millis(1500));
        assert!(!c.wipe_keys);
        assert!(c.record && c.node_exporter_textfile.is_none());
        assert!(c
            .apply_file(
                "RECORD=no\nNODE_EXPORTER_TEXTFILE=/var/lib/prometheus/node-exporter/exitrd.prom\n"
            )
            .is_empty());
        assert!(!c.record);
        assert_eq!(
            c.node_exporter_textfile.as_deref(),
            Some("/var/lib/prometheus/node-exporter/exitrd.prom")
        );
        assert_eq!(
            c.apply_file("NODE_EXPORTER_TEXTFILE=relative.prom\n").len(),
            1
        );
        let problems = c.apply_cmdline("root=/dev/vda ro exitrd.timeout=20 exitrd.debug quiet");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.timeout, Duration::from_secs(20));
        assert!(c.debug);
        // A root shell and kept keys from the boot loader: only when the file allows it.
        let refused = c.apply_cmdline("exitrd.break=shell exitrd.wipe_keys=yes");
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].contains("CMDLINE_ALLOW=break"), "{refused:?}");
        assert!(!c.break_shell);
        assert!(c
            .apply_file("CMDLINE_ALLOW=\"break wipe-keys\"\n")
            .is_empty());
        assert!(c
            .apply_cmdline("exitrd.break=shell exitrd.wipe_keys=yes")
            .is_empty());
        assert!(c.break_shell && c.wipe_keys);
        // The command line cannot widen what it may change.
        assert_eq!(c.apply_cmdline("exitrd.cmdline_allow=break").len(), 1);
        assert_eq!(c.apply_file("CMDLINE_ALLOW=timeout").len(), 1);
    }

    #[test]
    fn durations_out_of_range_keep_the_default() {
        let mut c = Config::default();
        let problems =
            c.apply_file("STEP_TIMEOUT=0\nTIMEOUT=1h\nKILL_GRACE=2min\nSTEP_TIMEOUT=1h\n");
        // "1h" is no duration exitrd knows; the others are out of range.
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems[0].contains("step_timeout 0s is out of range (1s to 300s)"),
            "{problems:?}"
        );
        assert!(
            problems[2].contains("kill_grace 120s is out of range"),
            "{problems:?}"
        );
        assert_eq!(c, Config::default());
        let problems = c.apply_cmdline("exitrd.step_timeout=61min exitrd.timeout=4s");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(c, Config::default());
        assert!(c
            .apply_file("STEP_TIMEOUT=300\nTIMEOUT=5\nKILL_GRACE=0\n")
            .is_empty());
    }

    #[test]
    fn problems_are_reported_and_defaults_kept() {
        let mut c = Config::default();
        let problems = c.apply_file("TIMEOUT=soon\nCOLOUR=blue\njust words\nDEBUG=maybe\n");
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("line 1: bad value"));
        assert!(problems[1].contains("unknown key \"colour\""));
        assert!(problems[2].starts_with("line 3: expected KEY=value"));
        assert_eq!(c, Config::default());
        let problems = c.apply_cmdline("exitrd.timeout=x exitrd.nope=1 exitrd.fault=panic");
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn corrupt_binary_garbage_never_panics() {
        let mut c = Config::default();
        let garbage =
            String::from_utf8_lossy(&[0xff, b'=', 0, b'\n', b'=', b'=', 0x80]).into_owned();
        let _ = c.apply_file(&garbage);
        assert!(parse_duration("18446744073709551615min").is_none());
    }
}
