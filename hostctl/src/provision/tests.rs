//! Provisioning end to end against a temporary host tree: documents in
//! through fw_cfg's file, results read back from the tree. Links are
//! planted where a container's root could plant them, failures injected
//! half way, runs cut short and run again.

use std::os::unix::fs::{MetadataExt as _, symlink};
use std::path::{Path, PathBuf};

use super::*;
use berth_hostapi::provisioning::{IMAGE_ROOT_KEYS, INSTALLED_IMAGE_KEYS, JOURNAL};

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/var/lib/web:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nweb:x:1000:\nadm:x:4:\n";
const SHADOW: &str = "root:*:1::::::\n";

/// A host tree as an OSTree deployment lays it out: `/root` and `/bin`
/// are the image's top-level links, a volume sits under /var/lib.
fn host() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    for d in [
        "etc",
        "var/roothome",
        "var/lib/vol",
        "usr/bin",
        "usr/sbin",
        "usr/lib/berth/ssh",
        "sys/firmware/qemu_fw_cfg/by_name/opt/org.berth/config",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    symlink("var/roothome", r.join("root")).unwrap();
    symlink("usr/bin", r.join("bin")).unwrap();
    std::fs::write(r.join("usr/bin/sh"), "").unwrap();
    std::fs::write(r.join("usr/sbin/nologin"), "").unwrap();
    std::fs::write(r.join("etc/passwd"), PASSWD).unwrap();
    std::fs::write(r.join("etc/group"), GROUP).unwrap();
    std::fs::write(r.join("etc/shadow"), SHADOW).unwrap();
    std::fs::write(r.join("etc/hostname"), "berth\n").unwrap();
    t
}

fn give(r: &Path, user_data: &str) {
    std::fs::write(r.join(sources::FW_CFG_FILE), user_data).unwrap();
}

fn read(r: &Path, p: &str) -> String {
    std::fs::read_to_string(r.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Every file under `r` with its contents, mode and owner (sys/ left
/// out): two snapshots equal means nothing changed.
fn snapshot(r: &Path) -> Vec<(PathBuf, String, u32, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![r.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.starts_with(r.join("sys")) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                std::fs::read_to_string(&p).unwrap_or_default()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().display().to_string()
            } else {
                stack.push(p.clone());
                String::new()
            };
            out.push((
                p.strip_prefix(r).unwrap().to_path_buf(),
                content,
                m.mode(),
                m.uid(),
            ));
        }
    }
    out.sort();
    out
}

fn skipped(o: Outcome) -> String {
    match o {
        Outcome::Skipped(why) => why,
        o => panic!("not skipped: {o:?}"),
    }
}

#[test]
fn fw_cfg_document_applies_once() {
    let t = host();
    let r = t.path();
    give(r, "#cloud-config\nhostname: node-9\n");
    assert!(
        matches!(run(r).unwrap(), Outcome::Applied(ref a) if a.hostname.as_deref() == Some("node-9"))
    );
    assert_eq!(read(r, "etc/hostname"), "node-9\n");
    let record = read(r, "var/lib/berth/provisioned");
    let lines: Vec<&str> = record.lines().collect();
    assert!(
        lines[0].starts_with("sha256:") && lines[1].contains("fw_cfg"),
        "{record}"
    );
    assert!(
        lines[2].starts_with("sha256:") && lines[2].len() == 71,
        "{record}"
    );
    std::fs::write(r.join("etc/hostname"), "changed-by-admin\n").unwrap();
    assert!(matches!(run(r).unwrap(), Outcome::AlreadyApplied(_)));
    assert_eq!(read(r, "etc/hostname"), "changed-by-admin\n");
}

#[test]
fn invalid_documents_are_skipped_not_fatal() {
    let t = host();
    let r = t.path();
    give(r, "#cloud-config\nhostname: [oops\n");
    assert!(matches!(run(r).unwrap(), Outcome::Skipped(_)));
    assert!(!r.join(RECORD.trim_start_matches('/')).exists());
    assert_eq!(read(r, "etc/hostname"), "berth\n");
}

#[test]
fn applies_hostname_users_keys_files_and_env() {
    let t = host();
    let r = t.path();
    let doc = "#cloud-config\nhostname: node-1\nusers:\n  - default\n  - name: ops\n    groups: [adm]\n    ssh_authorized_keys: [ssh-ed25519 AAAA ops]\nssh_authorized_keys: [ssh-ed25519 BBBB admin]\nwrite_files:\n  - path: /etc/motd\n    content: hello\n  - path: /var/lib/app/secret\n    encoding: b64\n    content: c2VjcmV0\n    permissions: '0600'\n    owner: ops:ops\nberth:\n  service_env:\n    web: {GREETING: hi}\n  update:\n    wariness: 0.25\n";
    give(r, doc);
    let Outcome::Applied(a) = run(r).unwrap() else {
        panic!("not applied")
    };
    assert_eq!(a.users, ["ops"]);
    assert_eq!(a.keys, 2);
    assert_eq!(read(r, "etc/hostname"), "node-1\n");
    assert!(read(r, "etc/passwd").contains("\nops:x:1001:1001::/var/home/ops:/bin/sh\n"));
    assert!(read(r, "etc/group").contains("\nadm:x:4:ops\n"));
    assert!(read(r, "etc/group").contains("\nops:x:1001:\n"));
    assert!(read(r, "etc/shadow").contains("\nops:!:"));
    assert_eq!(
        read(r, "var/home/ops/.ssh/authorized_keys"),
        "ssh-ed25519 AAAA ops\n"
    );
    let home = std::fs::metadata(r.join("var/home/ops")).unwrap();
    assert_eq!((home.mode() & 0o777, home.uid()), (0o700, 1001));
    let keys = std::fs::metadata(r.join("var/home/ops/.ssh/authorized_keys")).unwrap();
    assert_eq!(
        (keys.mode() & 0o777, keys.uid(), keys.gid()),
        (0o600, 1001, 1001)
    );
    assert_eq!(
        read(r, "var/roothome/.ssh/authorized_keys"),
        "ssh-ed25519 BBBB admin\n"
    );
    assert_eq!(read(r, "etc/motd"), "hello");
    let secret = std::fs::metadata(r.join("var/lib/app/secret")).unwrap();
    assert_eq!(read(r, "var/lib/app/secret"), "secret");
    assert_eq!((secret.mode() & 0o777, secret.uid()), (0o600, 1001));
    assert_eq!(read(r, "etc/berth/env/web.env"), "GREETING=hi\n");
    assert_eq!(read(r, "etc/berth/wariness"), "0.25\n");
    assert_eq!(
        std::fs::metadata(r.join("etc/shadow")).unwrap().mode() & 0o777,
        std::fs::metadata(r.join("etc/passwd")).unwrap().mode() & 0o777,
        "shadow kept its mode (both were made by the test with the same umask)"
    );
    assert!(!r.join(JOURNAL).exists());
}

/// Puts something into a host tree before a run.
type Plant = Box<dyn Fn(&Path)>;

/// Links a container's root could plant in a volume (or an unprivileged
/// user in a home): each refused with a clear reason, nothing written.
#[test]
fn planted_links_are_refused_and_their_targets_untouched() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("file"), "outside\n").unwrap();
    let cases: Vec<(&str, Plant)> = vec![
        // config -> the host's /etc/shadow (relative, so it is the tree's).
        (
            "write_files:\n  - path: /var/lib/vol/config\n    content: 'root::0:0::::::'\n",
            Box::new(|r: &Path| {
                symlink("../../../etc/shadow", r.join("var/lib/vol/config")).unwrap()
            }),
        ),
        // The same, absolute.
        (
            "write_files:\n  - path: /var/lib/vol/config\n    content: x\n    append: true\n",
            Box::new(|r: &Path| symlink("/etc/shadow", r.join("var/lib/vol/config")).unwrap()),
        ),
        // A link as an intermediate directory.
        (
            "write_files:\n  - path: /var/lib/vol/dir/shadow\n    content: x\n",
            Box::new(|r: &Path| symlink("../../../etc", r.join("var/lib/vol/dir")).unwrap()),
        ),
        // A link to a file outside the root.
        (
            "write_files:\n  - path: /var/lib/vol/out\n    content: x\n",
            Box::new({
                let f = outside.path().join("file");
                move |r: &Path| symlink(&f, r.join("var/lib/vol/out")).unwrap()
            }),
        ),
        // A directory outside the root, to be made inside.
        (
            "write_files:\n  - path: /var/lib/vol/o/new/file\n    content: x\n",
            Box::new({
                let d = outside.path().to_path_buf();
                move |r: &Path| symlink(&d, r.join("var/lib/vol/o")).unwrap()
            }),
        ),
        // root's .ssh made a link to /etc: the keys would land in /etc.
        (
            "ssh_authorized_keys: [ssh-ed25519 KEY x]\n",
            Box::new(|r: &Path| symlink("../../etc", r.join("var/roothome/.ssh")).unwrap()),
        ),
        // A user's home planted as a link before the user exists.
        (
            "users:\n  - name: ops\n    ssh_authorized_keys: [ssh-ed25519 KEY x]\n",
            Box::new(|r: &Path| {
                std::fs::create_dir_all(r.join("var/home")).unwrap();
                symlink("../../etc", r.join("var/home/ops")).unwrap()
            }),
        ),
    ];
    for (doc, plant) in cases {
        let t = host();
        let r = t.path();
        plant(r);
        give(r, &format!("#cloud-config\nhostname: changed\n{doc}"));
        let before = snapshot(r);
        let outside_before = snapshot(outside.path());
        let why = skipped(run(r).unwrap());
        assert!(why.contains("symbolic link"), "{doc}: {why}");
        assert_eq!(snapshot(r), before, "{doc}: the tree changed");
        assert_eq!(snapshot(outside.path()), outside_before, "{doc}");
        assert_eq!(read(r, "etc/shadow"), SHADOW);
    }
}

#[test]
fn the_images_top_level_links_lead_where_they_lead() {
    let t = host();
    let r = t.path();
    give(
        r,
        "#cloud-config\nwrite_files:\n  - path: /root/.profile\n    content: x\n",
    );
    assert!(matches!(run(r).unwrap(), Outcome::Applied(_)));
    assert_eq!(read(r, "var/roothome/.profile"), "x");
    assert!(
        std::fs::symlink_metadata(r.join("root"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn paths_that_reach_usr_another_way_are_refused() {
    for p in [
        "//usr/x",
        "/./usr/x",
        "/etc/../usr/x",
        "/bin/x",
        "/run/x",
        "/x",
    ] {
        let t = host();
        let r = t.path();
        give(
            r,
            &format!("#cloud-config\nwrite_files:\n  - path: {p}\n    content: x\n"),
        );
        let why = skipped(run(r).unwrap());
        assert!(
            why.contains("read-only /usr") || why.contains("outside /etc and /var"),
            "{p}: {why}"
        );
        assert!(
            !r.join("usr/x").exists() && !r.join("usr/bin/x").exists(),
            "{p}"
        );
    }
}

/// A document that fails late (its last file has an unknown owner) or
/// whose writing fails half way changes nothing; fixed, it applies whole.
#[test]
fn a_failure_half_way_leaves_the_old_state() {
    let doc = |owner: &str| {
        format!(
            "#cloud-config\nhostname: new-name\nusers:\n  - name: ops\n    ssh_authorized_keys: [ssh-ed25519 KEY ops]\nwrite_files:\n  - path: /etc/motd\n    content: hi\n  - path: /var/lib/vol/log\n    content: \"line\\n\"\n    append: true\n  - path: /var/lib/app/conf\n    content: x\n    owner: {owner}\n"
        )
    };
    // An invalid owner in the last entry: found while planning.
    let t = host();
    let r = t.path();
    std::fs::write(r.join("var/lib/vol/log"), "old\n").unwrap();
    let before = snapshot(r);
    give(r, &doc("nosuch:ops"));
    let why = skipped(run(r).unwrap());
    assert!(why.contains("no user nosuch"), "{why}");
    assert_eq!(snapshot(r), before);

    // An I/O failure while staging each file in turn: rolled back.
    give(r, &doc("ops:ops"));
    let files = {
        let host = Beneath::open(r).unwrap();
        let user = document::parse_user(&doc("ops:ops")).unwrap();
        let rec = plan::Record {
            instance: "i".into(),
            source: "s".into(),
            digest: "d".into(),
        };
        plan::document(&host, &user, Some("new-name"), &rec)
            .unwrap()
            .changes
            .files
            .len()
    };
    assert!(files >= 8, "{files}");
    for at in 0..files {
        let faults = txn::Faults {
            fail_staging_at: Some(at),
            ..txn::Faults::default()
        };
        let why = skipped(run_with(r, faults).unwrap());
        assert!(why.contains("applying"), "{why}");
        assert_eq!(snapshot(r), before, "failing at file {at}");
    }
    assert!(matches!(run(r).unwrap(), Outcome::Applied(_)));
    assert_eq!(read(r, "etc/hostname"), "new-name\n");
    assert_eq!(read(r, "var/lib/vol/log"), "old\nline\n");
}

/// A run killed during the renames (the 60 s timeout, a power cut) is
/// completed by the next run: all of the document, its append once.
#[test]
fn a_run_cut_short_is_completed_by_the_next_and_append_lands_once() {
    let doc = "#cloud-config\nhostname: new-name\nusers:\n  - name: ops\nwrite_files:\n  - path: /var/lib/vol/log\n    content: \"line\\n\"\n    append: true\n  - path: /etc/motd\n    content: hi\n";
    for at in 0..7 {
        let t = host();
        let r = t.path();
        std::fs::write(r.join("var/lib/vol/log"), "old\n").unwrap();
        give(r, doc);
        let faults = txn::Faults {
            die_after_renames: Some(at),
            ..txn::Faults::default()
        };
        let why = skipped(run_with(r, faults).unwrap());
        assert!(why.contains("the next run completes them"), "{why}");
        assert!(r.join(JOURNAL).exists(), "{at}");
        // The next boot finishes the journal, with the seed still there
        // (then found applied) or gone (the journal alone makes the run).
        let expect = if at % 2 == 0 {
            Outcome::AlreadyApplied(String::new())
        } else {
            std::fs::remove_file(r.join(sources::FW_CFG_FILE)).unwrap();
            Outcome::NoData
        };
        assert!(berth_hostapi::provisioning::data_present(r));
        let got = run(r).unwrap();
        assert_eq!(
            std::mem::discriminant(&got),
            std::mem::discriminant(&expect),
            "{at}: {got:?}"
        );
        assert!(!r.join(JOURNAL).exists());
        assert_eq!(read(r, "var/lib/vol/log"), "old\nline\n", "{at}");
        assert_eq!(read(r, "etc/hostname"), "new-name\n");
        assert_eq!(read(r, "etc/motd"), "hi");
        assert_eq!(read(r, "etc/passwd").matches("\nops:").count(), 1);
        // Nothing staged is left behind.
        let stray: Vec<_> = snapshot(r)
            .into_iter()
            .filter(|(p, ..)| p.to_string_lossy().contains(".berth-provision"))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }
}

#[test]
fn append_applied_twice_appends_once() {
    let t = host();
    let r = t.path();
    std::fs::write(r.join("var/lib/vol/log"), "old\n").unwrap();
    // No instance-id: the document's digest is its identity.
    give(
        r,
        "#cloud-config\nwrite_files:\n  - path: /var/lib/vol/log\n    content: \"line\\n\"\n    append: true\n  - path: /var/lib/vol/log\n    content: \"two\\n\"\n    append: true\n",
    );
    assert!(matches!(run(r).unwrap(), Outcome::Applied(_)));
    assert!(matches!(run(r).unwrap(), Outcome::AlreadyApplied(_)));
    assert_eq!(read(r, "var/lib/vol/log"), "old\nline\ntwo\n");
}

/// A run killed while staging leaves temporaries; the next run removes
/// them and applies the document from the old state.
#[test]
fn a_run_cut_short_while_staging_is_rolled_back() {
    let t = host();
    let r = t.path();
    give(
        r,
        "#cloud-config\nhostname: new-name\nwrite_files:\n  - path: /var/lib/new/dir/f\n    content: x\n",
    );
    let host = Beneath::open(r).unwrap();
    let user = document::parse_user(&read(r, sources::FW_CFG_FILE)).unwrap();
    let rec = plan::Record {
        instance: "i".into(),
        source: "s".into(),
        digest: "d".into(),
    };
    let p = plan::document(&host, &user, Some("new-name"), &rec).unwrap();
    let before = snapshot(r);
    txn::apply_with(
        &host,
        &p.changes,
        txn::Faults {
            fail_staging_at: Some(p.changes.files.len() - 1),
            ..txn::Faults::default()
        },
    )
    .unwrap_err();
    assert_eq!(snapshot(r), before);
    // Now by hand, as a kill would leave it.
    let journal = r#"{"state":"staging","dirs":["/var/lib/new","/var/lib/new/dir"],"files":[{"dir":"/var/lib/new/dir","tmp":".f.berth-provision","name":"f"},{"dir":"/etc","tmp":".hostname.berth-provision","name":"hostname"}]}"#;
    std::fs::create_dir_all(r.join("var/lib/berth")).unwrap();
    std::fs::create_dir_all(r.join("var/lib/new/dir")).unwrap();
    std::fs::write(r.join("var/lib/new/dir/.f.berth-provision"), "x").unwrap();
    std::fs::write(r.join("etc/.hostname.berth-provision"), "new-name\n").unwrap();
    std::fs::write(r.join(JOURNAL), journal).unwrap();
    assert_eq!(
        txn::recover(&host).unwrap(),
        Some("rolled back an interrupted run")
    );
    assert!(!r.join("var/lib/new").exists());
    assert!(!r.join("etc/.hostname.berth-provision").exists());
    assert_eq!(read(r, "etc/hostname"), "berth\n");
    assert!(matches!(run(r).unwrap(), Outcome::Applied(_)));
    assert_eq!(read(r, "var/lib/new/dir/f"), "x");
}

#[test]
fn colons_and_newlines_in_account_fields_are_refused() {
    for doc in [
        "users:\n  - name: ops\n    gecos: \"x:0:0\"\n",
        "users:\n  - name: ops\n    gecos: \"Ops\\nroot2::0:0::/:/bin/sh\"\n",
        "users:\n  - name: ops\n    shell: \"/bin/sh:x\"\n",
        "users:\n  - name: ops\n    shell: \"/bin/sh\\nevil::0:0::/:/bin/sh\"\n",
        "users:\n  - name: \"ops:x:0:0\"\n",
        "users:\n  - name: ops\n    groups: \"adm:x:0:\"\n",
        "users:\n  - name: ops\n    groups: [\"adm\\nroot\"]\n",
        "users:\n  - name: ops\n    ssh_authorized_keys: [\"ssh-ed25519 A\\nssh-ed25519 B\"]\n",
        "ssh_authorized_keys: [\"ssh-ed25519 A\\ncommand=x ssh-ed25519 B\"]\n",
        "write_files:\n  - path: /etc/x\n    owner: \"ops:x\\n\"\n",
    ] {
        let t = host();
        let r = t.path();
        let before = snapshot(r);
        give(r, &format!("#cloud-config\n{doc}"));
        let why = skipped(run(r).unwrap());
        assert!(why.contains("user-data"), "{doc}: {why}");
        assert_eq!(snapshot(r), before, "{doc}");
    }
}

#[test]
fn unknown_groups_and_shells_are_refused_before_anything_is_written() {
    for (doc, expect) in [
        (
            "users:\n  - name: ops\n    groups: [wheel]\n",
            "group wheel",
        ),
        (
            "users:\n  - name: ops\n    shell: /bin/bash\n",
            "shell /bin/bash",
        ),
        (
            "write_files:\n  - path: /etc/x\n    owner: web:nogroup\n",
            "no group nogroup",
        ),
    ] {
        let t = host();
        let r = t.path();
        let before = snapshot(r);
        give(r, &format!("#cloud-config\nhostname: other\n{doc}"));
        let why = skipped(run(r).unwrap());
        assert!(why.contains(expect), "{doc}: {why}");
        assert_eq!(snapshot(r), before, "{doc}");
    }
}

/// The image's keys follow the booted image: an upgrade that drops key A
/// revokes it; a key from the provisioning data stays.
#[test]
fn image_keys_follow_the_image_and_provisioned_keys_stay() {
    let t = host();
    let r = t.path();
    let keys = r.join("var/roothome/.ssh/authorized_keys");
    std::fs::remove_dir_all(r.join("sys")).unwrap();
    std::fs::write(r.join(IMAGE_ROOT_KEYS), "ssh-ed25519 A image-v1\n").unwrap();
    assert!(berth_hostapi::provisioning::data_present(r));
    assert_eq!(run(r).unwrap(), Outcome::NoData);
    let text = std::fs::read_to_string(&keys).unwrap();
    assert_eq!(
        text,
        format!("{}\nssh-ed25519 A image-v1\n{}\n", keys::BEGIN, keys::END)
    );
    let m = std::fs::metadata(&keys).unwrap();
    assert_eq!((m.mode() & 0o777, m.uid()), (0o600, 0));

    // Provisioned, and an admin's own.
    std::fs::create_dir_all(r.join("sys/firmware/qemu_fw_cfg/by_name/opt/org.berth/config"))
        .unwrap();
    give(
        r,
        "#cloud-config\nssh_authorized_keys: [ssh-ed25519 P provisioned]\n",
    );
    assert!(matches!(run(r).unwrap(), Outcome::Applied(_)));
    std::fs::write(
        &keys,
        std::fs::read_to_string(&keys).unwrap() + "ssh-ed25519 M admin\n",
    )
    .unwrap();

    // The upgrade: /usr now has only B.
    std::fs::write(r.join(IMAGE_ROOT_KEYS), "ssh-ed25519 B image-v2\n").unwrap();
    run(r).unwrap();
    let text = std::fs::read_to_string(&keys).unwrap();
    assert!(!text.contains("ssh-ed25519 A"), "{text}");
    assert!(text.contains("ssh-ed25519 B image-v2\n"), "{text}");
    assert!(text.contains("ssh-ed25519 P provisioned\n"), "{text}");
    assert!(text.contains("ssh-ed25519 M admin\n"), "{text}");
    assert_eq!(read(r, INSTALLED_IMAGE_KEYS), "ssh-ed25519 B image-v2\n");

    // An image with no keys at all: the block goes, and then boots
    // without data skip provisioning again.
    std::fs::remove_file(r.join(IMAGE_ROOT_KEYS)).unwrap();
    std::fs::remove_dir_all(r.join("sys")).unwrap();
    assert!(berth_hostapi::provisioning::data_present(r));
    run(r).unwrap();
    assert_eq!(
        std::fs::read_to_string(&keys).unwrap(),
        "ssh-ed25519 P provisioned\nssh-ed25519 M admin\n"
    );
    assert!(!berth_hostapi::provisioning::data_present(r));
}

/// A host provisioned by an older version had the image's key merged in
/// with the others; the first boot of a version without it revokes it.
#[test]
fn image_keys_merged_by_older_versions_are_revoked_at_the_upgrade() {
    let t = host();
    let r = t.path();
    std::fs::remove_dir_all(r.join("sys")).unwrap();
    std::fs::create_dir_all(r.join("var/roothome/.ssh")).unwrap();
    std::fs::write(
        r.join("var/roothome/.ssh/authorized_keys"),
        "ssh-ed25519 A image-v1\nssh-ed25519 P provisioned\n",
    )
    .unwrap();
    // The rollback deployment (v1) still lists A.
    let v1 = r.join("sysroot/ostree/deploy/berth/deploy/abc.0");
    std::fs::create_dir_all(v1.join("usr/lib/berth/ssh")).unwrap();
    std::fs::write(v1.join(IMAGE_ROOT_KEYS), "ssh-ed25519 A image-v1\n").unwrap();
    std::fs::write(r.join(IMAGE_ROOT_KEYS), "ssh-ed25519 B image-v2\n").unwrap();
    run(r).unwrap();
    assert_eq!(
        read(r, "var/roothome/.ssh/authorized_keys"),
        format!(
            "{}\nssh-ed25519 B image-v2\n{}\nssh-ed25519 P provisioned\n",
            keys::BEGIN,
            keys::END
        )
    );
}

/// An account that exists gets its groups and keys; its home is left as
/// it is (made only for the keys).
#[test]
fn an_existing_account_gets_groups_without_a_new_home() {
    let t = host();
    let r = t.path();
    give(r, "#cloud-config\nusers:\n  - name: web\n    groups: adm\n");
    let Outcome::Applied(a) = run(r).unwrap() else {
        panic!("not applied")
    };
    assert!(a.users.is_empty());
    assert!(read(r, "etc/group").contains("\nadm:x:4:web\n"));
    assert!(!r.join("var/lib/web").exists());
    assert_eq!(read(r, "etc/passwd"), PASSWD);
}

#[test]
fn a_wariness_outside_zero_to_one_skips_the_document() {
    let t = host();
    let r = t.path();
    give(r, "#cloud-config\nberth:\n  update:\n    wariness: 1.5\n");
    assert!(matches!(run(r).unwrap(), Outcome::Skipped(_)));
    assert!(!r.join("etc/berth/wariness").exists());
}

#[test]
fn fleet_settings_are_written_for_the_registry_and_bad_ones_skip_the_document() {
    let t = host();
    let r = t.path();
    give(
        r,
        "#cloud-config\nberth:\n  fleet:\n    etcd: [\"https://10.0.0.1:2379\", \"https://10.0.0.2:2379\"]\n    ca_file: /etc/berth/etcd-ca.pem\n    lease_ttl_secs: 20\n",
    );
    assert!(matches!(run(r).unwrap(), Outcome::Applied(_)));
    let written = berth_hostapi::fleet::effective(r, None).unwrap().unwrap();
    assert_eq!(
        written.etcd,
        ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    );
    assert_eq!(written.ca_file.as_deref(), Some("/etc/berth/etcd-ca.pem"));
    assert_eq!(written.lease_ttl_secs, 20);

    for bad in [
        "    etcd: []\n",
        "    etcd: [\"10.0.0.1:2379\"]\n",
        "    etcd: [\"http://\"]\n",
        "    etcd: [\"http://a:2379\"]\n    ca_file: etcd-ca.pem\n",
        "    etcd: [\"http://a:2379\"]\n    lease_ttl_secs: 1\n",
        "    etcd: [\"http://a:2379\"]\n    endpoints: [x]\n",
    ] {
        let t = host();
        let r = t.path();
        give(r, &format!("#cloud-config\nberth:\n  fleet:\n{bad}"));
        assert!(matches!(run(r).unwrap(), Outcome::Skipped(_)), "{bad}");
        assert!(!r.join("etc/berth/fleet.json").exists(), "{bad}");
    }
}
