//! Real validators on a built image, no boot: the partition table
//! (sfdisk, sgdisk), the ESP (fsck.vfat, and what systemd-boot needs on
//! it), the root (e2fsck), the OSTree repositories (ostree fsck on the
//! build's archive repo and on the image's own), and the sysroot as
//! `ostree admin status` sees it. Plus: two builds with the same
//! SOURCE_DATE_EPOCH (and signing key) give the same bytes; the signing
//! key is made once per repository, and an image built with `verify =
//! false` has none; a build that fails after its commit publishes nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_qemu_tests::command::{output, run_text, text};
use berth_qemu_tests::{fixture, image};

/// (start, size) in bytes of partition `n` (1-based), from sfdisk's JSON.
fn partition(image: &Path, n: usize) -> (u64, u64) {
    let json = run_text(Command::new("sfdisk").arg("--json").arg(image)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let p = &v["partitiontable"]["partitions"][n - 1];
    let sector = v["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    (
        p["start"].as_u64().unwrap() * sector,
        p["size"].as_u64().unwrap() * sector,
    )
}

fn extract(image: &Path, (start, size): (u64, u64), out: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::File::open(image).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut o = std::fs::File::create(out).unwrap();
    let mut left = size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = f.read(&mut buf[..left.min(1 << 20) as usize]).unwrap();
        assert!(n > 0);
        o.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

/// debugfs's rdump sets the mode before the owner, and chown clears
/// set-uid/set-gid bits: put them back on the repo's objects (their
/// checksums cover the mode), reading the modes with `ls -p`.
fn restore_setid_bits(fs: &Path, objects: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let script: String = (0..=255)
        .map(|i| format!("ls -p /ostree/repo/objects/{i:02x}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let cmds = dir.path().join("cmds");
    std::fs::write(&cmds, script).unwrap();
    let listing = run_text(Command::new("debugfs").arg("-f").arg(&cmds).arg(fs)).unwrap();
    let mut current = String::new();
    let mut fixed = 0;
    for line in listing.lines() {
        if let Some(d) = line.strip_prefix("debugfs: ls -p /ostree/repo/objects/") {
            current = d.trim().to_string();
            continue;
        }
        // /inode/mode/uid/gid/name/size/
        let f: Vec<&str> = line.split('/').collect();
        if f.len() < 6 {
            continue;
        }
        let Ok(mode) = u32::from_str_radix(f[2], 8) else {
            continue;
        };
        if mode & 0o6000 != 0 && mode & 0o170000 == 0o100000 {
            let path = objects.join(&current).join(f[5]);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
                .unwrap();
            fixed += 1;
        }
    }
    assert!(
        fixed > 0 || !listing.contains("04755"),
        "found set-id objects but fixed none"
    );
}

fn minimal() -> PathBuf {
    image(Path::new("manifests/minimal.toml"))
}

#[test]
fn partition_table_is_valid_gpt_with_discoverable_types() {
    let img = minimal();
    run_text(Command::new("sfdisk").arg("--verify").arg(&img)).unwrap();
    let v = run_text(Command::new("sgdisk").arg("-v").arg(&img)).unwrap();
    assert!(v.contains("No problems found"), "{v}");
    let json: serde_json::Value =
        serde_json::from_str(&run_text(Command::new("sfdisk").arg("--json").arg(&img)).unwrap())
            .unwrap();
    let parts = json["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(json["partitiontable"]["label"], "gpt");
    assert_eq!(
        parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        "ESP type"
    );
    assert_eq!(
        parts[1]["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        "root x86-64 type"
    );
    for p in parts {
        assert_eq!(p["start"].as_u64().unwrap() % 2048, 0, "1 MiB aligned");
    }
}

#[test]
fn esp_passes_fsck_and_holds_systemd_boot_and_one_entry() {
    let img = minimal();
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp.img");
    extract(&img, partition(&img, 1), &esp);
    run_text(Command::new("fsck.vfat").arg("-n").arg(&esp)).unwrap();
    let bootx = run_text(Command::new("mdir").arg("-i").arg(&esp).arg("::/EFI/BOOT")).unwrap();
    assert!(bootx.contains("BOOTX64"), "{bootx}");
    let entries = run_text(
        Command::new("mdir")
            .args(["-b", "-i"])
            .arg(&esp)
            .arg("::/loader/entries"),
    )
    .unwrap();
    let names: Vec<&str> = entries.lines().filter(|l| l.ends_with(".conf")).collect();
    assert_eq!(names.len(), 1, "{entries}");
    let entry = run_text(
        Command::new("mtype")
            .arg("-i")
            .arg(&esp)
            .arg(format!("::{}", names[0].trim_start_matches("::"))),
    )
    .unwrap();
    assert!(entry.contains("linux /berth/"), "{entry}");
    // The entry names the deployment by its tree id and no partition:
    // stage 1 finds both, as on a Secure Boot image.
    assert!(entry.contains("options rw console=tty0"), "{entry}");
    assert!(entry.contains(" berth.tree="), "{entry}");
    assert!(!entry.contains("ostree="), "{entry}");
    assert!(!entry.contains("root="), "{entry}");
    let conf = run_text(
        Command::new("mtype")
            .arg("-i")
            .arg(&esp)
            .arg("::/loader/loader.conf"),
    )
    .unwrap();
    assert!(!conf.contains("default"), "{conf}");
}

#[test]
fn root_passes_e2fsck_and_its_repo_and_sysroot_check_out() {
    let img = minimal();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.img");
    extract(&img, partition(&img, 2), &root);
    run_text(Command::new("e2fsck").args(["-f", "-n"]).arg(&root)).unwrap();
    // Copy the file system out without mounting it.
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    for top in ["/ostree", "/boot"] {
        run_text(
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("rdump {top} {}", tree.display()))
                .arg(&root),
        )
        .unwrap();
    }
    restore_setid_bits(&root, &tree.join("ostree/repo/objects"));
    let fsck = run_text(
        Command::new("ostree")
            .arg("fsck")
            .arg(format!("--repo={}", tree.join("ostree/repo").display())),
    )
    .unwrap();
    assert!(!fsck.contains("corrupted"), "{fsck}");
    let status = run_text(
        Command::new("ostree")
            .args(["admin", "status"])
            .arg(format!("--sysroot={}", tree.display())),
    )
    .unwrap();
    assert!(status.contains("berth "), "{status}");
    assert!(status.contains("Version: 1.0.0"), "{status}");
    let build_repo = img.parent().unwrap().join("repo");
    let fsck = run_text(
        Command::new("ostree")
            .arg("fsck")
            .arg(format!("--repo={}", build_repo.display())),
    )
    .unwrap();
    assert!(!fsck.contains("corrupted"), "{fsck}");
    let refs = run_text(
        Command::new("ostree")
            .arg("refs")
            .arg(format!("--repo={}", build_repo.display())),
    )
    .unwrap();
    assert!(refs.lines().any(|r| r == "berth/minimal/x86_64"), "{refs}");
}

#[test]
fn same_inputs_give_the_same_image_bytes() {
    // Make sure the package tree is cached, then build twice into two
    // fresh output directories with a fixed SOURCE_DATE_EPOCH.
    let _ = minimal();
    let dir = tempfile::tempdir().unwrap();
    let manifest = fixture::workspace_root().join("manifests/minimal.toml");
    let mut sums = Vec::new();
    for n in ["a", "b"] {
        let out = dir.path().join(n);
        if n == "b" {
            // The repository's signing key is an input too (its public half
            // is in the image): b's repository gets a's.
            std::fs::create_dir_all(&out).unwrap();
            run_text(
                Command::new("cp")
                    .arg("-a")
                    .arg(dir.path().join("a/repo.signing"))
                    .arg(out.join("repo.signing")),
            )
            .unwrap();
        }
        run_text(
            Command::new(fixture::berth_bin())
                .arg("build")
                .arg(&manifest)
                .arg("--output")
                .arg(&out)
                .env("SOURCE_DATE_EPOCH", "1700000000"),
        )
        .unwrap();
        let sum = run_text(Command::new("sha256sum").arg(out.join("minimal.raw"))).unwrap();
        sums.push(sum.split_whitespace().next().unwrap().to_string());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(sums[0], sums[1], "two builds of the same inputs differ");
}

/// `manifests/minimal.toml` with another version and disk size, and
/// `extra` after its `[update] url`, written into `dir`.
fn minimal_variant(dir: &Path, version: &str, size: &str, extra: &str) -> PathBuf {
    let text =
        std::fs::read_to_string(fixture::workspace_root().join("manifests/minimal.toml")).unwrap();
    let url = "url = \"http://10.0.2.2:8080\"";
    assert!(text.contains(url) && text.contains("size = \"1G\""));
    let text = text
        .replace("version = \"1.0.0\"", &format!("version = \"{version}\""))
        .replace("size = \"1G\"", &format!("size = \"{size}\""))
        .replace(url, &format!("{url}\n{extra}"));
    let path = dir.join(format!("minimal-{version}-{size}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `berth build MANIFEST --output OUT`: exit code and all its output.
fn build(manifest: &Path, out: &Path) -> (i32, String) {
    let o = output(
        Command::new(fixture::berth_bin())
            .arg("build")
            .arg(manifest)
            .arg("--output")
            .arg(out),
    )
    .unwrap();
    (o.status.code().unwrap_or(-1), text(&o))
}

/// Every file under `out` as (path, size, mtime, contents of small
/// files), but the repository's objects and scratch space (the objects of
/// an unpublished commit may stay: content-addressed, unreferenced) and
/// GnuPG's own files.
fn snapshot(out: &Path) -> Vec<(PathBuf, u64, i128, Option<Vec<u8>>)> {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    let mut stack = vec![out.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(out).unwrap().to_path_buf();
            // GnuPG keeps its own bookkeeping in its home (trust database,
            // random seed); the key itself is compared through the public
            // key file beside it.
            if [
                "repo/objects",
                "repo/tmp",
                "repo/state",
                "repo.signing/gnupg",
            ]
            .iter()
            .any(|p| rel.starts_with(p))
            {
                continue;
            }
            let md = std::fs::symlink_metadata(&path).unwrap();
            if md.is_dir() {
                stack.push(path.clone());
            }
            let mtime = i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
            let contents =
                (md.is_file() && md.len() < 1 << 20).then(|| std::fs::read(&path).unwrap());
            files.push((rel, md.len(), mtime, contents));
        }
    }
    files.sort();
    files
}

/// The image's own /ostree/repo/config (its update remote), read from the
/// root partition without mounting it.
fn image_repo_config(img: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.img");
    extract(img, partition(img, 2), &root);
    run_text(
        Command::new("debugfs")
            .arg("-R")
            .arg("cat /ostree/repo/config")
            .arg(&root),
    )
    .unwrap()
}

#[test]
fn a_build_that_fails_after_its_commit_publishes_nothing() {
    let _ = minimal(); // the package tree, cached
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (code, first) = build(&minimal_variant(dir.path(), "1.0.0", "1G", ""), &out);
    assert_eq!(code, 0, "{first}");
    assert!(
        first.contains("signing    key") && first.contains(", new, in"),
        "{first}"
    );
    let key_dir = out.join("repo.signing");
    assert!(
        key_dir.join("gnupg").is_dir(),
        "no key beside the repository"
    );
    assert!(out.join("repo/summary.sig").is_file());
    let config = image_repo_config(&out.join("minimal.raw"));
    for want in [
        "gpg-verify=true",
        "gpg-verify-summary=true",
        "gpgkeypath=/usr/lib/berth/update-key.asc",
    ] {
        assert!(config.contains(want), "{want} missing from\n{config}");
    }
    let before = snapshot(&out);

    // Version 2 on a disk too small for it: committed, then the disk
    // stage fails. Hosts must not be offered it.
    let (code, failed) = build(&minimal_variant(dir.path(), "2.0.0", "200M", ""), &out);
    assert_eq!(code, 2, "{failed}");
    assert!(
        failed.contains("disk.size") && failed.contains("make the disk larger"),
        "{failed}"
    );
    assert!(
        failed.contains("[5/8] commit    done"),
        "it failed before its commit:\n{failed}"
    );
    let after = snapshot(&out);
    let changed: Vec<_> = after
        .iter()
        .filter(|f| !before.contains(f))
        .chain(before.iter().filter(|f| !after.contains(f)))
        .map(|f| f.0.display().to_string())
        .collect();
    assert!(changed.is_empty(), "the failed build changed {changed:?}");

    // The same version on a good disk: published, signed by the same key.
    let (code, second) = build(&minimal_variant(dir.path(), "2.0.0", "1G", ""), &out);
    assert_eq!(code, 0, "{second}");
    let key_line = |t: &str| {
        t.lines()
            .find(|l| l.trim_start().starts_with("signing"))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(|k| k.trim_end_matches([',', ';']).to_string())
    };
    assert!(
        second.contains(&format!("from {}", key_dir.display())),
        "{second}"
    );
    assert_eq!(key_line(&second), key_line(&first), "{first}\n{second}");
    let log = run_text(
        Command::new("ostree")
            .arg(format!("--repo={}", out.join("repo").display()))
            .args(["log", "berth/minimal/x86_64"]),
    )
    .unwrap();
    assert!(
        log.contains("Version: 2.0.0") && log.contains("Version: 1.0.0"),
        "{log}"
    );

    // The same manifest again, a second later: its tree id is new (it
    // includes the build time) and nothing else is, so the ref keeps its
    // commit and hosts have nothing to fetch; the image is that commit's.
    let commit_of = |t: &str| {
        t.lines()
            .find(|l| l.trim_start().starts_with("commit "))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
    };
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let summary_before = std::fs::read(out.join("repo/summary")).unwrap();
    let (code, third) = build(&minimal_variant(dir.path(), "2.0.0", "1G", ""), &out);
    assert_eq!(code, 0, "{third}");
    assert!(third.contains("unchanged"), "{third}");
    assert_eq!(commit_of(&third), commit_of(&second), "{second}\n{third}");
    assert_eq!(
        std::fs::read(out.join("repo/summary")).unwrap(),
        summary_before
    );
    let rev = run_text(
        Command::new("ostree")
            .arg(format!("--repo={}", out.join("repo").display()))
            .args(["rev-parse", "berth/minimal/x86_64"]),
    )
    .unwrap();
    assert_eq!(Some(rev.trim().to_string()), commit_of(&second));
}

#[test]
fn an_image_built_with_verify_false_has_no_key_and_says_so() {
    let _ = minimal();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (code, text) = build(
        &minimal_variant(dir.path(), "1.0.0", "1G", "verify = false"),
        &out,
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("signing    off ([update] verify = false)"),
        "{text}"
    );
    assert!(!out.join("repo.signing").exists(), "a key was made");
    assert!(!out.join("repo/summary.sig").exists());
    let repo = format!("--repo={}", out.join("repo").display());
    let show = run_text(
        Command::new("ostree")
            .arg(&repo)
            .args(["show", "berth/minimal/x86_64"]),
    )
    .unwrap();
    assert!(!show.contains("signature"), "{show}");
    let ls = output(Command::new("ostree").arg(&repo).args([
        "ls",
        "berth/minimal/x86_64",
        "/usr/lib/berth/update-key.asc",
    ]))
    .unwrap();
    assert!(!ls.status.success(), "the image carries a key");
    let config = image_repo_config(&out.join("minimal.raw"));
    assert!(
        config.contains("gpg-verify=false") && !config.contains("gpgkeypath"),
        "{config}"
    );
}
