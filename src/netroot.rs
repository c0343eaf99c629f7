//! Network roots: a root (or `/usr`) on NFS, on an iSCSI disk or on an NBD device needs
//! its network interface configured until exitrd has unmounted it and closed what lies
//! beneath. exitrd itself needs nothing else: it ends every process, and the kernel keeps
//! an interface's addresses and routes. What can take them away is a network service
//! stopped by systemd *before* the pivot:
//!
//! - systemd-networkd releases a DHCP lease (and drops its address) when it stops, unless
//!   `KeepConfiguration=` says `dhcp-on-stop`, `dhcp` or `yes`. It keeps it by itself only
//!   when `/` is a network file system, so an iSCSI or NBD root needs the setting;
//! - ifupdown's `networking.service` runs `ifdown -a` at shutdown: every interface `ifup`
//!   brought up (`auto`, `allow-hotplug`) goes down;
//! - the initramfs's own configuration (initramfs-tools' ipconfig, `/run/net-IF.conf`)
//!   has no daemon: it stays until power-off. NetworkManager is not known to drop a
//!   device's configuration when it stops; it is named, not judged.
//!
//! Everything here reads files below a root path, so tests use fixture trees.

use crate::topology::block::DevKind;
use crate::topology::Topology;
use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// File systems served over the network.
const NETWORK_FSTYPES: [&str; 5] = ["nfs", "nfs4", "cifs", "smb3", "ceph"];

/// Mount points systemd cannot unmount before it stops the network: what is left for
/// exitrd. (Other network mounts are unmounted by systemd while the network is still up:
/// their units are ordered after the network.)
const ROOT_MOUNTS: [&str; 2] = ["/", "/usr"];

/// Something in the root's storage that needs the network, and the server it talks to
/// when that is known (an address or a host name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkUse {
    pub what: String,
    pub server: Option<String>,
    /// A network file system as `/` itself (systemd-networkd keeps leases by itself then).
    pub root_is_netfs: bool,
}

fn option<'a>(options: &'a str, key: &str) -> Option<&'a str> {
    options
        .split(',')
        .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
}

/// The host part of `host:/path` (NFS) or `//host/share` (CIFS).
fn source_host(source: &str) -> Option<String> {
    let host = if let Some(rest) = source.strip_prefix("//") {
        rest.split('/').next()?
    } else if let Some(rest) = source.strip_prefix('[') {
        rest.split(']').next()?
    } else {
        source.rsplit_once(':')?.0
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// The server of `nbdroot=` on the kernel command line (initramfs-tools' NBD root):
/// `nbdroot=HOST,PORT,NAME`, `nbdroot=HOST:PORT/NAME` or with `[IPv6]`.
fn nbdroot_server(cmdline: &str) -> Option<String> {
    let value = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("nbdroot="))?;
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next().map(str::to_string);
    }
    let host = value.split([',', ':', '/']).next()?;
    (!host.is_empty()).then(|| host.to_string())
}

/// What in the storage of `/` and `/usr` needs the network.
pub fn network_uses(root: &Path, topo: &Topology) -> Vec<NetworkUse> {
    let mut uses = Vec::new();
    let cmdline = fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default();
    for m in topo
        .mounts
        .iter()
        .filter(|m| ROOT_MOUNTS.contains(&m.mount_point.as_lossy_str()))
    {
        if NETWORK_FSTYPES.contains(&m.fstype.as_str()) {
            let server = option(&m.super_options, "addr")
                .map(str::to_string)
                .or_else(|| source_host(&m.source));
            uses.push(NetworkUse {
                what: format!(
                    "{} ({} from {})",
                    m.mount_point.as_lossy_str(),
                    m.fstype,
                    m.source
                ),
                server,
                root_is_netfs: m.mount_point.as_lossy_str() == "/",
            });
            continue;
        }
        let Some(top) = topo.device_by_number(m.major, m.minor) else {
            continue;
        };
        // Every device beneath the mount: slaves, and a partition's disk.
        let mut seen = BTreeSet::new();
        let mut todo = vec![top.name.clone()];
        while let Some(name) = todo.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let Some(d) = topo.devices.get(&name) else {
                continue;
            };
            todo.extend(d.slaves.iter().cloned());
            if let DevKind::Partition {
                parent: Some(parent),
            } = &d.kind
            {
                todo.push(parent.clone());
            }
            let on = |how: &str| format!("{} (on {how} {})", m.mount_point.as_lossy_str(), d.name);
            if let DevKind::Nbd { connected: true } = d.kind {
                uses.push(NetworkUse {
                    what: on("the NBD device"),
                    server: nbdroot_server(&cmdline),
                    root_is_netfs: false,
                });
            } else if let DevKind::Iscsi { address, .. } = &d.kind {
                uses.push(NetworkUse {
                    what: on("the iSCSI disk"),
                    server: address.clone(),
                    root_is_netfs: false,
                });
            }
        }
    }
    uses
}

/// One route of `/proc/net/route` or `/proc/net/ipv6_route`: destination, prefix
/// length, metric, interface.
type Route = (IpAddr, u8, u32, String);

fn routes_v4(text: &str) -> Vec<Route> {
    const RTF_UP: u32 = 0x1;
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let hex = |i: usize| u32::from_str_radix(f.get(i)?, 16).ok();
            // The kernel prints the network-order value as a host-order number.
            let (dest, flags, metric, mask) = (hex(1)?, hex(3)?, f.get(6)?.parse().ok()?, hex(7)?);
            (flags & RTF_UP != 0).then(|| {
                let dest = Ipv4Addr::from(dest.to_ne_bytes());
                let mask = Ipv4Addr::from(mask.to_ne_bytes());
                let plen = u32::from(mask).leading_ones() as u8;
                (IpAddr::V4(dest), plen, metric, f[0].to_string())
            })
        })
        .collect()
}

fn routes_v6(text: &str) -> Vec<Route> {
    const RTF_UP: u32 = 0x1;
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[0].len() != 32 {
                return None;
            }
            let dest = u128::from_str_radix(f[0], 16).ok()?;
            let plen = u8::from_str_radix(f[1], 16).ok()?;
            let metric = u32::from_str_radix(f[5], 16).ok()?;
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            (flags & RTF_UP != 0 && f[9] != "lo").then(|| {
                (
                    IpAddr::V6(Ipv6Addr::from(dest)),
                    plen,
                    metric,
                    f[9].to_string(),
                )
            })
        })
        .collect()
}

fn covers(net: IpAddr, plen: u8, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(plen.min(32)))
                .unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(plen.min(128)))
                .unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// The interface the kernel would use to reach `server` (longest prefix, then lowest
/// metric); the default route's when the server is a name or unknown.
pub fn route_interface(root: &Path, server: Option<&str>) -> Option<String> {
    let v4 = fs::read_to_string(root.join("proc/net/route")).unwrap_or_default();
    let v6 = fs::read_to_string(root.join("proc/net/ipv6_route")).unwrap_or_default();
    let routes: Vec<Route> = routes_v4(&v4).into_iter().chain(routes_v6(&v6)).collect();
    let target = server.and_then(|s| s.parse::<IpAddr>().ok());
    routes
        .into_iter()
        .filter(|(net, plen, _, _)| match target {
            Some(a) => covers(*net, *plen, a),
            None => *plen == 0 && net.is_ipv4(),
        })
        .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)))
        .map(|r| r.3)
}

/// Key=value lines (systemd's state files).
fn state_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
}

/// The last value of `key` in section `[section]` of a unit-style file.
fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut in_section = false;
    let mut value = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == format!("[{section}]");
        } else if in_section {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    value = Some(v.trim().to_string());
                }
            }
        }
    }
    value
}

/// Where systemd-networkd looks for a .network file's drop-ins, lowest priority first
/// (a drop-in of the same name in an earlier directory of systemd's list wins).
const NETWORK_DIRS: [&str; 4] = [
    "usr/lib/systemd/network",
    "usr/local/lib/systemd/network",
    "run/systemd/network",
    "etc/systemd/network",
];

/// `[Network] key` of a .network file and its drop-ins (`FILE.d/*.conf`, read in name
/// order; a later value wins, as systemd reads them).
fn network_setting(root: &Path, file: &str, key: &str) -> Option<String> {
    let text = fs::read_to_string(root.join(file.trim_start_matches('/'))).unwrap_or_default();
    let mut value = ini_value(&text, "Network", key);
    let base = Path::new(file).file_name()?.to_string_lossy().into_owned();
    let mut dropins = std::collections::BTreeMap::new();
    for dir in NETWORK_DIRS {
        if let Ok(entries) = fs::read_dir(root.join(dir).join(format!("{base}.d"))) {
            for e in entries.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".conf") {
                    dropins.insert(name, e.path());
                }
            }
        }
    }
    for path in dropins.values() {
        if let Some(v) = fs::read_to_string(path)
            .ok()
            .and_then(|t| ini_value(&t, "Network", key))
        {
            value = Some(v);
        }
    }
    value
}

/// Whether ifupdown's configuration (`/etc/network/interfaces` and the files of
/// `/etc/network/interfaces.d`, which Debian's default file sources) has an `iface` stanza
/// for `iface`.
fn ifupdown_defines(root: &Path, iface: &str) -> bool {
    let dir = root.join("etc/network");
    let mut files = vec![dir.join("interfaces")];
    if let Ok(entries) = fs::read_dir(dir.join("interfaces.d")) {
        files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    files.iter().any(|f| {
        fs::read_to_string(f).is_ok_and(|text| {
            text.lines().any(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some("iface") && words.next() == Some(iface)
            })
        })
    })
}

fn is_yes(v: &str) -> bool {
    matches!(v, "yes" | "true" | "1" | "on")
}

/// Whether the interface keeps its configuration until the pivot, as far as the files
/// of whatever configured it tell: `(ok, who and why, fix)`.
pub fn keeper(root: &Path, iface: &str, root_is_netfs: bool) -> (bool, String, Option<String>) {
    let ifindex = fs::read_to_string(root.join("sys/class/net").join(iface).join("ifindex"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let run = root.join("run");
    let by_initramfs = run.join(format!("net-{iface}.conf")).exists()
        || run.join(format!("net6-{iface}.conf")).exists();

    // ifupdown: the per-interface state file of ifupdown 0.8, or the old common one. An
    // entry alone proves nothing: open-iscsi's udev helper writes one for the iSCSI
    // root's interface so that ifupdown leaves it alone, and `ifdown -a` takes down only
    // interfaces that /etc/network/interfaces defines. So: ifupdown installed, the
    // interface up by its state and defined in its configuration.
    let ifstate = run.join("network").join(format!("ifstate.{iface}"));
    let common = fs::read_to_string(run.join("network/ifstate")).unwrap_or_default();
    let ifup_has_it = fs::read_to_string(&ifstate).is_ok_and(|s| !s.trim().is_empty())
        || common.lines().any(|l| l.split('=').next() == Some(iface));
    let ifupdown_installed = ["usr/sbin/ifdown", "sbin/ifdown"]
        .iter()
        .any(|p| root.join(p).exists());
    if ifup_has_it && ifupdown_installed && ifupdown_defines(root, iface) {
        return (
            false,
            format!(
                "ifupdown brought {iface} up, and networking.service takes it down \
                 ('ifdown -a') before the pivot"
            ),
            Some(format!(
                "leave {iface} out of 'auto' and 'allow-hotplug' in /etc/network/interfaces \
                 (the initramfs configures it), then reboot"
            )),
        );
    }

    let link = fs::read_to_string(run.join("systemd/netif/links").join(&ifindex)).ok();
    let managed = link.as_deref().and_then(|l| {
        let admin = state_value(l, "ADMIN_STATE")?;
        let file = state_value(l, "NETWORK_FILE")?;
        (matches!(admin.as_str(), "configured" | "configuring") && !file.is_empty()).then_some(file)
    });
    if let Some(file) = managed {
        let dhcp = network_setting(root, &file, "DHCP").unwrap_or_default();
        if dhcp.is_empty() || dhcp == "no" || dhcp == "false" {
            return (
                true,
                format!("systemd-networkd configures {iface} ({file}) statically, and keeps static addresses when it stops"),
                None,
            );
        }
        let keep = network_setting(root, &file, "KeepConfiguration");
        let (value, said) = match &keep {
            Some(v) => (v.clone(), format!("KeepConfiguration={v}")),
            // networkd's own default: kept when / is a network file system.
            None if root_is_netfs => (
                "yes".into(),
                "its default for a network root file system".into(),
            ),
            None => ("no".into(), "KeepConfiguration= unset".into()),
        };
        if is_yes(&value) || value == "dhcp" || value == "dhcp-on-stop" {
            return (
                true,
                format!(
                    "systemd-networkd keeps {iface}'s DHCP address when it stops ({file}: {said})"
                ),
                None,
            );
        }
        return (
            false,
            format!(
                "systemd-networkd releases {iface}'s DHCP lease and drops its address when it stops, \
                 before the pivot ({file}: {said})"
            ),
            Some(format!(
                "printf '[Network]\\nKeepConfiguration=dhcp-on-stop\\n' > /etc/systemd/network/{}.d/exitrd.conf \
                 (mkdir the directory first), then networkctl reload",
                Path::new(&file)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )),
        );
    }
    if !ifindex.is_empty() && run.join("NetworkManager/devices").join(&ifindex).exists() {
        return (
            true,
            format!("NetworkManager manages {iface} (not known to drop it when it stops; not checked further)"),
            None,
        );
    }
    if by_initramfs {
        return (
            true,
            format!("the initramfs configured {iface} and no network service manages it: it stays up until power-off"),
            None,
        );
    }
    (
        true,
        format!("{iface}: configured by nothing exitrd knows (not the initramfs, systemd-networkd, ifupdown or NetworkManager); it must stay configured until the pivot"),
        None,
    )
}

/// The `network` check of `exitrd status`: `None` when nothing under `/` or `/usr`
/// needs the network; else `(ok, detail, fix)`.
pub fn check(root: &Path, topo: &Topology) -> Option<(bool, String, Option<String>)> {
    let uses = network_uses(root, topo);
    if uses.is_empty() {
        return None;
    }
    let mut ok = true;
    let mut details = Vec::new();
    let mut fixes = Vec::new();
    for u in &uses {
        let server = u.server.as_deref();
        match route_interface(root, server) {
            None => {
                ok = false;
                details.push(format!(
                    "{} needs the network, but no route leads to {}",
                    u.what,
                    server.unwrap_or("its server")
                ));
            }
            Some(iface) => {
                let (kept, why, fix) = keeper(root, &iface, u.root_is_netfs);
                ok &= kept;
                details.push(format!(
                    "{} needs {iface}{}: {why}",
                    u.what,
                    server.map(|s| format!(" (to {s})")).unwrap_or_default()
                ));
                fixes.extend(fix);
            }
        }
    }
    fixes.dedup();
    Some((
        ok,
        details.join("; "),
        (!fixes.is_empty()).then(|| fixes.join("; ")),
    ))
}

#[cfg(test)]
mod tests;
