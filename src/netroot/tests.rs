use super::*;
use std::path::PathBuf;

/// A fixture root with these files (a target starting with `->` makes a symlink).
fn root(name: &str, files: &[(&str, &str)]) -> PathBuf {
    crate::fixture::tree(&format!("netroot-{name}"), files)
}

const NFS_ROOT: &str = "20 1 0:21 / / rw,relatime shared:1 - nfs 10.0.2.2:/srv/root \
    rw,vers=3,rsize=131072,wsize=131072,hard,proto=tcp,mountaddr=10.0.2.2,addr=10.0.2.2\n";
// The usual routes of a guest on qemu's user network: its /24 and a default route.
const ROUTES: &str =
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
    ens3\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
    ens3\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

fn nfs_root(name: &str, more: &[(&str, &str)]) -> PathBuf {
    let mut files = vec![
        ("proc/self/mountinfo", NFS_ROOT),
        ("proc/net/route", ROUTES),
        ("sys/class/net/ens3/ifindex", "2\n"),
    ];
    files.extend_from_slice(more);
    root(name, &files)
}

fn run(r: &Path) -> Option<(bool, String, Option<String>)> {
    check(r, &Topology::read(r).unwrap())
}

#[test]
fn an_nfs_root_configured_by_the_initramfs_is_kept() {
    let r = nfs_root("nfs-initramfs", &[("run/net-ens3.conf", "DEVICE='ens3'\n")]);
    let (ok, detail, fix) = run(&r).expect("an NFS root needs the network");
    assert!(ok, "{detail}");
    assert!(detail.starts_with("/ (nfs from 10.0.2.2:/srv/root) needs ens3 (to 10.0.2.2): the initramfs configured ens3"), "{detail}");
    assert_eq!(fix, None);
}

const IFUPDOWN: [(&str, &str); 2] = [
    ("usr/sbin/ifdown", ""),
    (
        "etc/network/interfaces",
        "source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n",
    ),
];

#[test]
fn ifupdown_takes_the_root_interface_down_before_the_pivot() {
    let mut files = vec![
        ("run/net-ens3.conf", ""),
        ("run/network/ifstate.ens3", "ens3\n"),
        (
            "etc/network/interfaces.d/ens3",
            "allow-hotplug ens3\niface ens3 inet dhcp\n",
        ),
    ];
    files.extend_from_slice(&IFUPDOWN);
    let r = nfs_root("nfs-ifupdown", &files);
    let (ok, detail, fix) = run(&r).unwrap();
    assert!(!ok, "{detail}");
    assert!(detail.contains("ifupdown brought ens3 up"), "{detail}");
    assert!(fix.unwrap().contains("/etc/network/interfaces"));
    // The old common state file says the same.
    let mut files = vec![
        ("run/network/ifstate", "lo=lo\nens3=ens3\n"),
        ("etc/network/interfaces.d/ens3", "iface ens3 inet dhcp\n"),
    ];
    files.extend_from_slice(&IFUPDOWN);
    let r = nfs_root("nfs-ifupdown-old", &files);
    assert!(!run(&r).unwrap().0);
}

/// open-iscsi's udev helper marks the iSCSI root's interface up in ifupdown's state file
/// so that ifupdown leaves it alone (seen on trixie, iscsi-root): `ifdown -a` takes down
/// only what /etc/network/interfaces defines, and without ifupdown nothing reads the mark.
#[test]
fn a_state_entry_ifupdown_does_not_define_is_left_alone() {
    let marked = [
        ("run/net-ens3.conf", "DEVICE='ens3'\n"),
        ("run/network/ifstate", "ens3=ens3\n"),
    ];
    // No ifupdown installed.
    let r = nfs_root("ifstate-no-ifupdown", &marked);
    let (ok, detail, _) = run(&r).unwrap();
    assert!(ok, "{detail}");
    assert!(detail.contains("the initramfs configured ens3"), "{detail}");
    // ifupdown installed, the interface not in its configuration.
    let mut files = marked.to_vec();
    files.extend_from_slice(&IFUPDOWN);
    let r = nfs_root("ifstate-undefined", &files);
    let (ok, detail, _) = run(&r).unwrap();
    assert!(ok, "{detail}");
}

const NETWORKD_LINK: &str = "# This is private data. Do not parse.\nADMIN_STATE=configured\n\
    OPER_STATE=routable\nNETWORK_FILE=/etc/systemd/network/50-wired.network\n";
const DHCP_NETWORK: &str = "[Match]\nName=ens3\n\n[Network]\nDHCP=yes\n";

/// An ext4 root on a partition of an iSCSI disk (session 1), sysfs as the kernel lays it
/// out, the target's address on the session's connection.
fn iscsi_root(name: &str, more: &[(&str, &str)]) -> PathBuf {
    let disk = "sys/devices/platform/host2/session1/target2:0:0/2:0:0:0/block/sda";
    let part1 = format!("{disk}/sda1/dev");
    let part1_flag = format!("{disk}/sda1/partition");
    let disk_dev = format!("{disk}/dev");
    let mut files = vec![
        (
            "proc/self/mountinfo",
            "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n",
        ),
        ("proc/net/route", ROUTES),
        ("sys/class/net/ens3/ifindex", "2\n"),
        (
            "sys/class/block/sda",
            "->../../devices/platform/host2/session1/target2:0:0/2:0:0:0/block/sda",
        ),
        (
            "sys/class/block/sda1",
            "->../../devices/platform/host2/session1/target2:0:0/2:0:0:0/block/sda/sda1",
        ),
        (disk_dev.as_str(), "8:0\n"),
        (part1.as_str(), "8:1\n"),
        (part1_flag.as_str(), "1\n"),
        (
            "sys/class/iscsi_connection/connection1:0/persistent_address",
            "10.0.2.100\n",
        ),
        ("run/systemd/netif/links/2", NETWORKD_LINK),
        ("etc/systemd/network/50-wired.network", DHCP_NETWORK),
    ];
    files.extend_from_slice(more);
    root(name, &files)
}

#[test]
fn networkd_drops_an_iscsi_roots_dhcp_address_unless_told_to_keep_it() {
    let r = iscsi_root("iscsi-networkd", &[]);
    let uses = network_uses(&r, &Topology::read(&r).unwrap());
    assert_eq!(
        uses,
        vec![NetworkUse {
            what: "/ (on the iSCSI disk sda)".into(),
            server: Some("10.0.2.100".into()),
            root_is_netfs: false,
        }]
    );
    let (ok, detail, fix) = run(&r).unwrap();
    assert!(!ok, "{detail}");
    assert!(detail.contains("releases ens3's DHCP lease"), "{detail}");
    assert!(detail.contains("KeepConfiguration= unset"), "{detail}");
    assert!(fix
        .unwrap()
        .contains("/etc/systemd/network/50-wired.network.d/exitrd.conf"));

    // The fix it prints, as a drop-in: kept.
    let r = iscsi_root(
        "iscsi-networkd-kept",
        &[(
            "etc/systemd/network/50-wired.network.d/exitrd.conf",
            "[Network]\nKeepConfiguration=dhcp-on-stop\n",
        )],
    );
    let (ok, detail, _) = run(&r).unwrap();
    assert!(ok, "{detail}");
    assert!(
        detail.contains("KeepConfiguration=dhcp-on-stop"),
        "{detail}"
    );

    // A later drop-in (by name) wins over an earlier one.
    let r = iscsi_root(
        "iscsi-networkd-later",
        &[
            (
                "etc/systemd/network/50-wired.network.d/exitrd.conf",
                "[Network]\nKeepConfiguration=dhcp-on-stop\n",
            ),
            (
                "run/systemd/network/50-wired.network.d/zz-admin.conf",
                "[Network]\nKeepConfiguration=no\n",
            ),
        ],
    );
    assert!(!run(&r).unwrap().0);
}

#[test]
fn networkd_keeps_an_nfs_roots_lease_by_itself() {
    let r = nfs_root(
        "nfs-networkd",
        &[
            ("run/systemd/netif/links/2", NETWORKD_LINK),
            ("etc/systemd/network/50-wired.network", DHCP_NETWORK),
        ],
    );
    let (ok, detail, _) = run(&r).unwrap();
    assert!(ok, "{detail}");
    assert!(
        detail.contains("its default for a network root file system"),
        "{detail}"
    );
    // A static configuration is kept whatever the setting.
    let r = iscsi_root(
        "iscsi-static",
        &[(
            "etc/systemd/network/50-wired.network",
            "[Network]\nAddress=10.0.2.15/24\n",
        )],
    );
    assert!(run(&r).unwrap().0);
}

#[test]
fn the_route_is_the_longest_prefix_then_the_lowest_metric() {
    let routes =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
        eth1\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n\
        eth2\t0002000A\t00000000\t0001\t0\t0\t20\t00FFFFFF\t0\t0\t0\n\
        eth3\t0002000A\t00000000\t0001\t0\t0\t10\t00FFFFFF\t0\t0\t0\n\
        eth4\t0003000A\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
    let v6 = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 \
        00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth5\n";
    let r = root(
        "routes",
        &[("proc/net/route", routes), ("proc/net/ipv6_route", v6)],
    );
    let at = |s: Option<&str>| route_interface(&r, s);
    assert_eq!(at(Some("10.0.2.2")).as_deref(), Some("eth3"));
    assert_eq!(at(Some("10.9.9.9")).as_deref(), Some("eth1"));
    // eth4's route is not up.
    assert_eq!(at(Some("10.0.3.1")).as_deref(), Some("eth1"));
    assert_eq!(at(Some("192.0.2.1")).as_deref(), Some("eth0"));
    assert_eq!(at(Some("nfs.example.org")).as_deref(), Some("eth0"));
    assert_eq!(at(None).as_deref(), Some("eth0"));
    assert_eq!(at(Some("fd00::1")).as_deref(), Some("eth5"));
    assert_eq!(at(Some("2001:db8::1")), None);
}

#[test]
fn sources_and_command_lines_name_the_server() {
    assert_eq!(
        source_host("10.0.2.2:/srv/root").as_deref(),
        Some("10.0.2.2")
    );
    assert_eq!(source_host("[fd00::2]:/srv").as_deref(), Some("fd00::2"));
    assert_eq!(source_host("//files/share").as_deref(), Some("files"));
    assert_eq!(source_host("/dev/sda1"), None);
    assert_eq!(
        nbdroot_server("ro nbdroot=10.0.2.2:10809/root ip=dhcp").as_deref(),
        Some("10.0.2.2")
    );
    assert_eq!(
        nbdroot_server("nbdroot=srv,10809,root").as_deref(),
        Some("srv")
    );
    assert_eq!(
        nbdroot_server("nbdroot=[fd00::2]:10809").as_deref(),
        Some("fd00::2")
    );
    assert_eq!(nbdroot_server("root=/dev/nbd0"), None);
}

/// The NBD root captured in a VM: the root needs the network; no routes were captured,
/// so no route leads to the server: the check says so rather than passing.
#[test]
fn the_captured_nbd_root_needs_the_network() {
    let r = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nbd-root");
    let topo = Topology::read(&r).unwrap();
    let uses = network_uses(&r, &topo);
    assert_eq!(uses.len(), 1, "{uses:?}");
    assert!(
        uses[0].what.starts_with("/ (on the NBD device nbd"),
        "{uses:?}"
    );
    let (ok, detail, _) = check(&r, &topo).unwrap();
    assert!(
        !ok && detail.contains("no route leads to its server"),
        "{detail}"
    );
}

#[test]
fn storage_without_the_network_has_no_network_check() {
    for fixture in ["lvm-luks-md", "lvm-cache-thin", "live"] {
        let r = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(fixture);
        assert_eq!(check(&r, &Topology::read(&r).unwrap()), None, "{fixture}");
    }
}
