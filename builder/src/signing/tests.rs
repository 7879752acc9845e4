//! The repository key: made once, beside the repository, reused, private.

use std::os::unix::fs::PermissionsExt;

use super::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_key_directory_is_a_sibling_of_the_repository() {
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(
        key_dir(Path::new("out/repo")).unwrap(),
        cwd.join("out/repo.signing")
    );
    assert_eq!(
        key_dir(Path::new("/srv/updates/repo/")).unwrap(),
        Path::new("/srv/updates/repo.signing")
    );
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("r");
    std::fs::create_dir_all(repo.join("sub")).unwrap();
    assert_eq!(
        key_dir(&repo.join("sub/..")).unwrap(),
        repo.canonicalize().unwrap().with_file_name("r.signing")
    );
}

#[test]
fn signing_keys_are_the_usable_sec_records() {
    let listing = "\
sec:u:255:22:AAAA:1700000000:::u:::scSC:::+::ed25519:::0:
fpr:::::::::1111111111111111111111111111111111111111:
grp:::::::::0000:
uid:u::::1::0::Berth update signing key::::::::::0:
sec:r:255:22:BBBB:1:::u:::sc:::+::ed25519:::0:
fpr:::::::::2222222222222222222222222222222222222222:
sec:u:255:22:CCCC:1:::u:::eE:::+::cv25519:::0:
fpr:::::::::3333333333333333333333333333333333333333:
ssb:u:255:18:DDDD:1::::::e:::+::cv25519::
fpr:::::::::4444444444444444444444444444444444444444:
sec:-:255:22:EEEE:1700000500:::-:::scSC:::+::ed25519:::0:
fpr:::::::::5555555555555555555555555555555555555555:
";
    assert_eq!(
        parse_signing_keys(listing),
        [
            (
                "1111111111111111111111111111111111111111".to_string(),
                1_700_000_000
            ),
            (
                "5555555555555555555555555555555555555555".to_string(),
                1_700_000_500
            )
        ]
    );
}

#[test]
fn the_first_build_makes_the_key_and_later_ones_reuse_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let first = repository_key(&repo).unwrap();
    let kdir = dir.path().join("repo.signing");
    assert_eq!(first.origin, KeyOrigin::Created(kdir.clone()));
    assert_eq!(first.key_ids().len(), 1, "{:?}", first.key_ids());
    assert_eq!(first.key_ids()[0].len(), 40);
    assert!(
        first
            .public_key()
            .starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    );
    // Private, and nothing of it in the (served) repository.
    assert_eq!(mode(&kdir), 0o700);
    assert_eq!(mode(&kdir.join(GNUPG_DIR)), 0o700);
    assert!(!repo.exists(), "the key went into the repository");
    assert_eq!(
        std::fs::read(kdir.join(PUBLIC_KEY_FILE)).unwrap(),
        first.public_key()
    );

    let again = repository_key(&repo).unwrap();
    assert_eq!(again.origin, KeyOrigin::Reused(kdir.clone()));
    assert_eq!(again.key_ids(), first.key_ids());
    assert_eq!(again.public_key(), first.public_key());
    // No agent left running: every agent of a berth session still has
    // its session directory (a concurrent test's), none outlives it (it
    // may take a moment to exit after being told to).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let orphans: Vec<String> = agent_homes()
            .into_iter()
            .filter(|h| !Path::new(h).exists())
            .collect();
        if orphans.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gpg-agents outlived their sessions: {orphans:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn concurrent_first_builds_end_with_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let results: Vec<Signer> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| repository_key(&repo).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = results
        .iter()
        .filter(|s| matches!(s.origin, KeyOrigin::Created(_)))
        .count();
    assert!(created <= 1, "{created} builds each made a key");
    for r in &results {
        assert_eq!(r.key_ids(), results[0].key_ids());
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["repo.signing"], "{left:?}");
}

#[test]
fn a_key_directory_without_its_home_is_an_error_not_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("repo.signing")).unwrap();
    std::fs::write(dir.path().join("repo.signing/update-key.asc"), "x").unwrap();
    let e = repository_key(&dir.path().join("repo")).unwrap_err();
    assert!(e.to_string().contains("restore"), "{e:#}");
}

/// The `--homedir` of every running gpg-agent that a berth session started.
fn agent_homes() -> Vec<String> {
    let mut homes = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("gpg-agent")) {
            continue;
        }
        if let Some(i) = args.iter().position(|a| a == "--homedir") {
            if let Some(h) = args.get(i + 1).filter(|h| h.starts_with("/tmp/berth-gpg-")) {
                homes.push(h.clone());
            }
        }
    }
    homes
}
