use super::*;
use crate::topology::block::DmKind;
use std::fs;

fn record(clean: bool) -> Record {
    Record {
        format: FORMAT,
        exitrd_version: "0.1.0".into(),
        boot_id: "b1".into(),
        time: 1_796_212_800,
        time_utc: utc_string(1_796_212_800),
        verb: "poweroff".into(),
        duration_ms: 412,
        clean,
        closed_by_exitrd: vec!["md0".into()],
        closed_by_kernel: vec!["vg0-root".into(), "md0_crypt".into()],
        left: if clean {
            vec![]
        } else {
            vec![Left {
                device: "md0".into(),
                reason: "Device or resource busy".into(),
            }]
        },
        mounts_left: usize::from(!clean),
        held_by: if clean {
            vec![]
        } else {
            vec!["/oldroot is held by 412 (sleep) via cwd".into()]
        },
        deadline_reached: false,
    }
}

fn dev(name: &str, kind: DevKind, holders: &[&str], slaves: &[&str]) -> (String, BlockDev) {
    (
        name.to_string(),
        BlockDev {
            name: name.into(),
            major: 8,
            minor: 0,
            kind,
            holders: holders.iter().map(|s| s.to_string()).collect(),
            slaves: slaves.iter().map(|s| s.to_string()).collect(),
        },
    )
}

fn part(parent: &str) -> DevKind {
    DevKind::Partition {
        parent: Some(parent.into()),
    }
}

fn tree(name: &str, files: &[(&str, &str)], links: &[(&str, &str)]) -> PathBuf {
    let r = std::env::temp_dir().join(format!("exitrd-record-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&r);
    fs::create_dir_all(&r).unwrap();
    for (path, text) in files {
        let p = r.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    for (path, target) in links {
        let p = r.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }
    r
}

#[test]
fn a_record_survives_encode_and_decode() {
    for clean in [true, false] {
        let r = record(clean);
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
    }
    assert!(Record::decode("{").is_err());
    let other = record(true)
        .encode()
        .replace("\"format\": 1", "\"format\": 9");
    assert!(Record::decode(&other).unwrap_err().contains("format 9"));
}

#[test]
fn the_verdict_names_who_closed_what_or_what_was_left() {
    assert_eq!(
        record(true).verdict(),
        "last shutdown: clean, 0.4 s, poweroff, closed vg0-root, md0_crypt (kernel), md0 (exitrd) (2026-12-02T12:00:00Z)"
    );
    assert_eq!(
        record(false).verdict(),
        "last shutdown NOT clean: md0 (Device or resource busy) left open; 1 mount(s) left below /oldroot; /oldroot is held by 412 (sleep) via cwd (poweroff, 0.4 s, 2026-12-02T12:00:00Z)"
    );
}

#[test]
fn utc_dates() {
    assert_eq!(utc_string(0), "1970-01-01T00:00:00Z");
    assert_eq!(utc_string(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(utc_string(1_796_212_800 + 3661), "2026-12-02T13:01:01Z");
}

#[test]
fn fstab_gives_boot_and_the_esp_only() {
    let text = "# /etc/fstab\n\
        /dev/mapper/vg-root / ext4 errors=remount-ro 0 1\n\
        UUID=AB12-CD34  /boot/efi vfat umask=0077 0 1\n\
        UUID=1234-abcd /boot ext4 defaults 0 2\n\
        /dev/sr0 /media/cdrom udf,iso9660 user,noauto 0 0\n\
        LABEL=old /boot/ xfs defaults 0 0\n\
        LABEL=ro /boot ext4 ro 0 0\n";
    let p = fstab_places(text);
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].mount_point, "/boot/efi");
    assert_eq!(p[0].fstype, "vfat");
    assert_eq!(p[1].spec, "UUID=1234-abcd");
    assert_eq!(file_for("vfat"), "EFI/exitrd/last-shutdown.json");
    assert_eq!(file_for("ext4"), "exitrd/last-shutdown.json");
}

#[test]
fn specs_resolve_through_the_by_links() {
    let r = tree(
        "resolve",
        &[("dev/vda2", "")],
        &[
            // As udev names them (trixie VM): vfat in capitals, ext4 in lower case.
            ("dev/disk/by-uuid/AB12-CD34", "../../vda1"),
            ("dev/disk/by-uuid/1234-abcd", "../../vda2"),
            ("dev/disk/by-partuuid/0a1b", "../../vda1"),
            ("dev/disk/by-label/my\\x20boot", "../../vda2"),
            ("dev/mapper/vg-boot", "../dm-3"),
        ],
    );
    assert_eq!(resolve_spec(&r, "UUID=AB12-CD34").as_deref(), Some("vda1"));
    assert_eq!(resolve_spec(&r, "UUID=1234-abcd").as_deref(), Some("vda2"));
    assert_eq!(resolve_spec(&r, "UUID=1234-ABCD").as_deref(), Some("vda2"));
    assert_eq!(resolve_spec(&r, "PARTUUID=0A1B").as_deref(), Some("vda1"));
    assert_eq!(
        resolve_spec(&r, "LABEL=\"my boot\"").as_deref(),
        Some("vda2")
    );
    assert_eq!(resolve_spec(&r, "/dev/vda2").as_deref(), Some("vda2"));
    assert_eq!(
        resolve_spec(&r, "/dev/mapper/vg-boot").as_deref(),
        Some("dm-3")
    );
    assert_eq!(resolve_spec(&r, "UUID=none"), None);
    assert_eq!(resolve_spec(&r, "tmpfs"), None);
}

#[test]
fn devices_of_the_stack_are_refused() {
    let devices: BTreeMap<String, BlockDev> = [
        dev("vda", DevKind::Disk, &[], &[]),
        dev("vda1", part("vda"), &[], &[]),
        dev("vda2", part("vda"), &[], &[]),
        dev("vda3", part("vda"), &["dm-0"], &[]),
        dev(
            "dm-0",
            DevKind::Dm {
                name: "vda3_crypt".into(),
                uuid: "CRYPT-LUKS2-x".into(),
                kind: DmKind::Crypt,
            },
            &[],
            &["vda3"],
        ),
        dev(
            "md0",
            DevKind::Md {
                level: "raid1".into(),
            },
            &[],
            &["vdb"],
        ),
        dev("md0p1", part("md0"), &[], &[]),
        dev("vdb", DevKind::Disk, &["md0"], &[]),
    ]
    .into_iter()
    .collect();
    assert_eq!(refuse_reason(&devices, "vda1", &[]), None);
    assert_eq!(refuse_reason(&devices, "vda2", &[]), None);
    let why = refuse_reason(&devices, "dm-0", &[]).unwrap();
    assert!(
        why.contains("vda3_crypt is a device-mapper device"),
        "{why}"
    );
    let why = refuse_reason(&devices, "md0p1", &[]).unwrap();
    assert!(why.contains("sits on md0 (an MD array)"), "{why}");
    let why = refuse_reason(&devices, "vda3", &[]).unwrap();
    assert!(why.contains("held by dm-0"), "{why}");
    let why = refuse_reason(&devices, "vda2", &["vda2".into()]).unwrap();
    assert!(why.contains("taken down"), "{why}");
    assert!(refuse_reason(&devices, "sdz1", &[]).is_some());
}

#[test]
fn boot_ids_roll_over_once_per_boot() {
    let r = tree("bootid", &[(KERNEL_BOOT_ID, "boot-1\n")], &[]);
    assert_eq!(previous_boot_id(&r), None);
    assert!(remember_boot(&r).unwrap());
    assert!(!remember_boot(&r).unwrap(), "once per boot");
    assert_eq!(previous_boot_id(&r), None);
    fs::write(r.join(KERNEL_BOOT_ID), "boot-2\n").unwrap();
    // Before exitrd.service ran in this boot, the stored id is the previous boot's.
    assert_eq!(previous_boot_id(&r).as_deref(), Some("boot-1"));
    assert!(remember_boot(&r).unwrap());
    assert_eq!(previous_boot_id(&r).as_deref(), Some("boot-1"));
    assert_eq!(
        fs::read_to_string(r.join(BOOT_ID_FILE)).unwrap().trim(),
        "boot-2"
    );
}

fn esp_machine(name: &str, rec: Option<&Record>, previous: &str) -> PathBuf {
    let mut files: Vec<(&str, String)> = vec![
        (
            "etc/fstab",
            "/dev/mapper/vg-root / ext4 defaults 0 1\nUUID=1234 /boot ext4 defaults 0 2\nUUID=AB12 /boot/efi vfat umask=0077 0 1\n".into(),
        ),
        (KERNEL_BOOT_ID, "current\n".into()),
        (BOOT_ID_FILE, "current\n".into()),
        (PREVIOUS_BOOT_ID_FILE, format!("{previous}\n")),
    ];
    if let Some(r) = rec {
        files.push(("boot/exitrd/last-shutdown.json", r.encode()));
    }
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    tree(
        name,
        &files,
        &[
            ("dev/disk/by-uuid/1234", "../../vda2"),
            ("dev/disk/by-uuid/AB12", "../../vda1"),
        ],
    )
}

fn plain_disk() -> BTreeMap<String, BlockDev> {
    [
        dev("vda", DevKind::Disk, &[], &[]),
        dev("vda1", part("vda"), &[], &[]),
        dev("vda2", part("vda"), &[], &[]),
    ]
    .into_iter()
    .collect()
}

#[test]
fn the_last_shutdown_is_read_back_and_stale_records_are_not_taken() {
    let mut rec = record(true);
    rec.boot_id = "previous".into();
    let r = esp_machine("fresh", Some(&rec), "previous");
    let l = last_shutdown(&r, &plain_disk());
    assert!(l.recorded, "{l:?}");
    assert_eq!(l.clean, Some(true));
    assert!(
        l.summary.starts_with("last shutdown: clean"),
        "{}",
        l.summary
    );
    assert_eq!(l.places, vec!["/boot".to_string(), "/boot/efi".to_string()]);
    assert!(l.path.unwrap().ends_with("boot/exitrd/last-shutdown.json"));

    let r = esp_machine("stale", Some(&rec), "another");
    let l = last_shutdown(&r, &plain_disk());
    assert!(!l.recorded);
    assert_eq!(l.clean, None);
    assert!(l.summary.starts_with(NO_RECORD), "{}", l.summary);
    assert!(
        l.summary.contains("of an earlier boot (previous"),
        "{}",
        l.summary
    );

    let r = esp_machine("none", None, "previous");
    let l = last_shutdown(&r, &plain_disk());
    assert!(!l.recorded);
    assert_eq!(l.reason.as_deref(), Some(NO_RECORD));
}

#[test]
fn without_a_place_status_says_what_would_make_one() {
    let r = tree(
        "noplace",
        &[("etc/fstab", "/dev/mapper/vg-root / ext4 defaults 0 1\n")],
        &[],
    );
    let l = last_shutdown(&r, &plain_disk());
    assert!(!l.recorded && l.places.is_empty());
    assert!(
        l.summary.starts_with("no place for a record") && l.summary.contains("/boot/efi"),
        "{}",
        l.summary
    );
}

#[test]
fn journal_and_node_exporter_text() {
    let l = LastShutdown {
        recorded: true,
        clean: Some(false),
        summary: record(false).verdict(),
        reason: None,
        path: None,
        places: vec![],
        previous_boot_id: None,
        record: Some(record(false)),
    };
    let fields = journal_fields(&l);
    assert!(fields.contains(&("MESSAGE_ID", MESSAGE_ID.to_string())));
    assert!(fields.contains(&("PRIORITY", "4".to_string())));
    assert!(fields.contains(&("EXITRD_CLEAN", "0".to_string())));
    assert!(fields.contains(&("EXITRD_LEFT", "md0".to_string())));
    let d = journal_datagram(&[("A", "x".into()), ("B", "1\n2".into())]);
    assert_eq!(d, b"A=x\nB\n\x03\0\0\0\0\0\0\x001\n2\n");
    let text = prometheus_text(&l);
    assert!(text.contains("\nexitrd_last_shutdown_clean 0\n"), "{text}");
    assert!(
        text.contains("\nexitrd_last_shutdown_recorded 1\n"),
        "{text}"
    );
    assert!(
        text.contains("\nexitrd_last_shutdown_devices_left 1\n"),
        "{text}"
    );
}

#[test]
fn the_journal_entry_goes_to_the_socket_below_the_root() {
    let r = tree("journal", &[], &[]);
    let dir = r.join("run/systemd/journal");
    fs::create_dir_all(&dir).unwrap();
    let sock = std::os::unix::net::UnixDatagram::bind(dir.join("socket")).unwrap();
    let fields = vec![
        ("MESSAGE_ID", MESSAGE_ID.to_string()),
        ("MESSAGE", "x".into()),
    ];
    send_journal(&r, &fields).unwrap();
    let mut buf = [0u8; 1024];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], journal_datagram(&fields).as_slice());
}
