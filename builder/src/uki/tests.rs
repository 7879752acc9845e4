//! The tree id, the section layout, and (when systemd's stub is on this
//! machine) a whole signed UKI checked with objdump and sbverify.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::command::run_stdout;
use crate::keys::{GenerateOpts, Tools};
use crate::manifest::{EnrollMode, Manifest};

fn inputs<'a>(name: &'a str, a: &'a str, b: &'a str) -> TreeIdInputs<'a> {
    TreeIdInputs {
        name,
        version: "1.0.0",
        timestamp: 1_700_000_000,
        vmlinuz_sha256: a,
        initramfs_sha256: b,
        kargs: "rw console=ttyS0",
    }
}

/// sha256 of "a" and of "b".
const SHA_A: &str = "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb";
const SHA_B: &str = "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d";

#[test]
fn tree_id_is_the_domain_separated_sha256_prefix() {
    // printf 'berth-tree-id\nweb\n1.0.0\n1700000000\n<sha a>\n<sha b>\nrw console=ttyS0\n'
    //   | sha256sum | cut -c1-32
    assert_eq!(
        tree_id(&inputs("web", SHA_A, SHA_B)),
        "42d715f99e8996a50dcb6faf2b3aaa31"
    );
    let base = tree_id(&inputs("web", SHA_A, SHA_B));
    assert_ne!(tree_id(&inputs("web", SHA_B, SHA_A)), base);
    assert_ne!(tree_id(&inputs("webx", SHA_A, SHA_B)), base);
    let t = TreeIdInputs {
        kargs: "rw console=ttyS0 quiet",
        ..inputs("web", SHA_A, SHA_B)
    };
    assert_ne!(tree_id(&t), base);
}

#[test]
fn sections_follow_the_stub_page_aligned_and_ascending() {
    // The Debian 252 stub ends at 0x190e2 (.sbat), ImageBase 0.
    assert_eq!(
        section_vmas(0x190e2, &[0x100, 0x1000, 0x1001, 5]),
        [0x1a000, 0x1b000, 0x1c000, 0x1e000]
    );
    // Already aligned: no gap; ImageBase counts.
    assert_eq!(
        section_vmas(0x1_4000_0000 + 0x3000, &[1, 0]),
        [0x1_4000_3000, 0x1_4000_4000]
    );
    assert_eq!(section_vmas(0, &[]), Vec::<u64>::new());
    assert_eq!(round_up(4097, 4096), 8192);
    assert_eq!(round_up(4096, 4096), 4096);
}

#[test]
fn objcopy_marks_only_linux_as_code() {
    let s = |name, size| Section {
        name,
        file: PathBuf::from(format!("/f/{name}")),
        size,
    };
    let args = objcopy_args(
        0x190e2,
        &[s(".osrel", 10), s(".linux", 0x2000)],
        Path::new("stub"),
        Path::new("out"),
    );
    assert_eq!(
        args,
        [
            "--add-section",
            ".osrel=/f/.osrel",
            "--change-section-vma",
            ".osrel=0x1a000",
            "--set-section-flags",
            ".osrel=data,readonly",
            "--add-section",
            ".linux=/f/.linux",
            "--change-section-vma",
            ".linux=0x1b000",
            "--set-section-flags",
            ".linux=code,readonly",
            "stub",
            "out",
        ]
    );
}

#[test]
fn private_keys_must_be_plain_pem() {
    let plain = "-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n";
    assert_eq!(private_key_problem(plain), None);
    let rsa = "-----BEGIN RSA PRIVATE KEY-----\nMII\n-----END RSA PRIVATE KEY-----\n";
    assert_eq!(private_key_problem(rsa), None);
    let enc = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMII\n-----END ENCRYPTED PRIVATE KEY-----\n";
    assert!(private_key_problem(enc).unwrap().contains("encrypted"));
    let cert = "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n";
    assert_eq!(private_key_problem(cert), Some("not a PEM private key"));
}

/// A manifest in `dir` with `[secure-boot]` lines `extra`.
fn manifest(dir: &Path, extra: &str) -> Manifest {
    let path = dir.join("m.toml");
    let text = format!("name = \"x\"\nversion = \"1\"\n[secure-boot]\n{extra}");
    std::fs::write(&path, &text).unwrap();
    Manifest::load(&path).unwrap()
}

fn keys(dir: &Path) -> PathBuf {
    let k = dir.join("sb");
    crate::keys::generate(
        &GenerateOpts {
            dir: k.clone(),
            name: "Test".into(),
        },
        &Tools::default(),
    )
    .unwrap();
    k
}

#[test]
fn prepare_resolves_paths_against_the_manifest_and_checks_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    keys(tmp.path());
    let good = "key = \"sb/db.key\"\ncertificate = \"sb/db.crt\"\n";
    let m = manifest(tmp.path(), &format!("{good}enroll-keys = \"sb\"\n"));
    let i = prepare(&m).unwrap().unwrap();
    assert_eq!(i.key, tmp.path().join("sb/db.key"));
    assert_eq!(i.enroll_keys, Some(tmp.path().join("sb")));
    assert_eq!(i.enroll, EnrollMode::Manual);

    let fails = |extra: &str| {
        let e = prepare(&manifest(tmp.path(), extra)).unwrap_err();
        let me = e
            .downcast_ref::<crate::manifest::ManifestError>()
            .unwrap_or_else(|| panic!("not a manifest error: {e}"))
            .clone();
        assert_eq!(crate::error::exit_code(&e), std::process::ExitCode::from(2));
        me
    };
    let e = fails("key = \"sb/none.key\"\ncertificate = \"sb/db.crt\"\n");
    assert_eq!(
        (e.key.as_str(), e.position),
        ("secure-boot.key", Some((4, 7)))
    );
    assert!(e.message.contains("cannot read"), "{e}");
    let e = fails("key = \"sb/db.crt\"\ncertificate = \"sb/db.crt\"\n");
    assert!(e.message.contains("not a PEM private key"), "{e}");
    let e = fails("key = \"sb/db.key\"\ncertificate = \"sb/db.key\"\n");
    assert_eq!(e.key, "secure-boot.certificate", "{e}");
    let e = fails(&format!("{good}enroll-keys = \".\"\n"));
    assert_eq!(
        (e.key.as_str(), e.position.map(|p| p.0)),
        ("secure-boot.enroll-keys", Some(6))
    );
    assert!(e.message.contains("has no PK.auth"), "{e}");

    let encrypted = tmp.path().join("enc.key");
    run_stdout(
        "encrypting a key",
        Command::new("openssl")
            .args(["pkey", "-aes256", "-passout", "pass:x", "-in"])
            .arg(tmp.path().join("sb/db.key"))
            .arg("-out")
            .arg(&encrypted),
    )
    .unwrap();
    let e = fails("key = \"enc.key\"\ncertificate = \"sb/db.crt\"\n");
    assert!(e.message.contains("an encrypted private key"), "{e}");
}

/// systemd's EFI stub and systemd-boot: installed, or in a package tree
/// `berth build` cached.
fn find_boot_files() -> Option<(PathBuf, PathBuf)> {
    let rel = contract::STUB_IN_TREE;
    let mut roots = vec![PathBuf::from("/")];
    if let Ok(trees) = std::fs::read_dir(crate::packages::Cache::default_root().join("trees")) {
        roots.extend(trees.flatten().map(|e| e.path()));
    }
    roots.into_iter().find_map(|r| {
        let stub = r.join(rel);
        let boot = r.join(contract::SYSTEMD_BOOT_IN_TREE);
        (stub.is_file() && boot.is_file()).then_some((stub, boot))
    })
}

/// `objdump -h` sections: (name, size, vma, flags line).
fn sections(file: &Path) -> Vec<(String, u64, u64, String)> {
    let text = run_stdout("objdump", Command::new("objdump").arg("-h").arg(file)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 7 && f[0].parse::<u32>().is_ok() {
            let hexnum = |s: &str| u64::from_str_radix(s, 16).unwrap();
            let flags = lines.get(i + 1).unwrap_or(&"").trim().to_string();
            out.push((f[1].to_string(), hexnum(f[2]), hexnum(f[3]), flags));
        }
    }
    out
}

#[test]
fn a_signed_uki_from_the_real_stub_has_its_sections_in_order() {
    let Some((stub, boot)) = find_boot_files() else {
        eprintln!(
            "skipped: no {} here or in a cached package tree (run a build, or install \
             systemd-boot-efi)",
            contract::STUB_IN_TREE
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys(tmp.path());
    let (base, overlay) = (tmp.path().join("base"), tmp.path().join("overlay"));
    let put = |root: &Path, rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    put(
        &base,
        contract::STUB_IN_TREE,
        &std::fs::read(&stub).unwrap(),
    );
    put(
        &base,
        contract::SYSTEMD_BOOT_IN_TREE,
        &std::fs::read(&boot).unwrap(),
    );
    // objcopy and sbsign take any bytes as a kernel; only booting needs a PE.
    put(
        &base,
        "usr/lib/modules/6.1.0-test/vmlinuz",
        &vec![0x4d; 20_000],
    );
    put(&base, "usr/lib/os-release", b"NAME=Debian\n");
    put(
        &overlay,
        "usr/lib/os-release",
        b"NAME=Berth\nPRETTY_NAME=\"Berth x 1\"\n",
    );
    put(
        &overlay,
        "usr/lib/modules/6.1.0-test/initramfs.img",
        &vec![7; 5000],
    );
    let inputs = Inputs {
        key: keys.join("db.key"),
        certificate: keys.join("db.crt"),
        enroll_keys: Some(keys.clone()),
        enroll: EnrollMode::Force,
    };
    let tree = Tree {
        base: &base,
        overlay: &overlay,
    };
    let image = Image {
        name: "x",
        version: "1",
        timestamp: 1_700_000_000,
        kver: "6.1.0-test",
        kargs: "rw console=ttyS0,115200\n",
    };
    let id = write_tree_id(tree, &image).unwrap();
    let report = write(&inputs, tree, &image, &id, &tmp.path().join("scratch")).unwrap();

    let uki = overlay
        .join("usr/lib/modules/6.1.0-test")
        .join(contract::UKI_NAME);
    assert_eq!(report.size, std::fs::metadata(&uki).unwrap().len());
    let tree_id =
        std::fs::read_to_string(overlay.join(contract::TREE_ID_PATH.trim_start_matches('/')))
            .unwrap();
    assert_eq!(tree_id, format!("{}\n", report.tree_id));
    assert_eq!(report.tree_id.len(), 32);

    let stub_sections = sections(&stub);
    let all = sections(&uki);
    assert_eq!(
        &all[..stub_sections.len()],
        &stub_sections[..],
        "the stub's own sections"
    );
    let added: Vec<_> = all[stub_sections.len()..].to_vec();
    let names: Vec<&str> = added.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, [".osrel", ".cmdline", ".uname", ".initrd", ".linux"]);
    let stub_last = stub_sections.iter().map(|s| s.2 + s.1).max().unwrap();
    assert_eq!(added[0].2, round_up(stub_last, 4096));
    for w in added.windows(2) {
        assert!(w[0].2 + w[0].1 <= w[1].2, "{w:?} overlap");
        assert_eq!(w[1].2 % 4096, 0, "{w:?}");
    }
    assert!(added[4].3.contains("CODE"), "{:?}", added[4]);
    assert!(added[0].3.contains("DATA"), "{:?}", added[0]);
    assert_eq!(added[0].1, 35, "the overlay's os-release wins");
    let cmdline = format!("rw console=ttyS0,115200 berth.tree={}", report.tree_id);
    assert_eq!(added[1].1, cmdline.len() as u64);

    let verify = |f: &Path| {
        run_stdout(
            "sbverify",
            Command::new("sbverify")
                .arg("--cert")
                .arg(keys.join("db.crt"))
                .arg(f),
        )
        .unwrap()
    };
    assert!(verify(&uki).contains("Signature verification OK"));
    let signed_boot = overlay.join(contract::SIGNED_SYSTEMD_BOOT_IN_TREE);
    assert!(verify(&signed_boot).contains("Signature verification OK"));
    // The .cmdline is the image's arguments and the tree id, nothing else.
    let dumped = tmp.path().join("cmdline.out");
    run_stdout(
        "objcopy",
        Command::new("objcopy")
            .arg("-O")
            .arg("binary")
            .arg("--only-section=.cmdline")
            .arg(&uki)
            .arg(&dumped),
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(&dumped).unwrap(), cmdline);

    let enrolled = overlay.join(contract::ENROLL_KEYS_IN_TREE);
    for f in ENROLL_FILES {
        assert_eq!(
            std::fs::read(enrolled.join(f)).unwrap(),
            std::fs::read(keys.join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(overlay.join(contract::ENROLL_MODE_IN_TREE)).unwrap(),
        "force\n"
    );
}

#[test]
fn stub_end_reads_image_base_and_the_last_section() {
    let Some((stub, _)) = find_boot_files() else {
        eprintln!("skipped: no {} on this machine", contract::STUB_IN_TREE);
        return;
    };
    let end = stub_end(&std::fs::read(&stub).unwrap()).unwrap();
    let expected = sections(&stub).iter().map(|s| s.2 + s.1).max().unwrap();
    assert_eq!(end, expected);
    assert!(stub_end(b"MZ not a PE").is_err());
}

#[test]
fn the_qemu_tests_secure_boot_manifests_find_their_keys() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu-tests/manifests");
    for v in ["secure-boot-v1.toml", "secure-boot-v2.toml"] {
        let m = Manifest::load(&dir.join(v)).unwrap();
        let i = prepare(&m)
            .unwrap()
            .unwrap_or_else(|| panic!("{v}: no [secure-boot]"));
        assert_eq!(i.enroll, EnrollMode::Force, "{v}");
        assert!(i.enroll_keys.is_some(), "{v}");
    }
}
