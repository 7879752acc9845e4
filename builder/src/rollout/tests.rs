//! Rollouts against real repositories signed with the repository key,
//! checked as a host checks them (a remote trusting the key), and the
//! arithmetic of pausing and resuming.

use std::process::ExitCode;

use super::*;
use crate::commit::tests::{Fixture, REF, host, host_remote};
use crate::signing;

const OTHER: &str = "berth/other/x86_64";

fn opts(f: &Fixture, ostree_ref: &str, action: Option<Action>) -> RolloutOpts {
    RolloutOpts {
        repo: f.repo.clone(),
        ostree_ref: ostree_ref.to_string(),
        action,
        json: false,
    }
}

fn start(at: u64, duration_secs: u64, start_fraction: f64) -> Option<Action> {
    Some(Action::Start(Start {
        start: Some(at),
        duration_secs,
        start_fraction,
    }))
}

fn change(c: Change) -> Option<Action> {
    Some(Action::Change(c))
}

/// The published document of `ostree_ref`, as hosts find it.
fn published(f: &Fixture, ostree_ref: &str) -> Option<berth_sysroot::rollout::SignedDoc> {
    berth_sysroot::rollout::read_repo_summary(&f.repo)
        .unwrap()
        .rollouts
        .get(ostree_ref)
        .cloned()
}

fn document(f: &Fixture, ostree_ref: &str) -> Option<Rollout> {
    published(f, ostree_ref).map(|d| serde_json::from_slice(&d.doc).unwrap())
}

fn is_usage_error(e: &anyhow::Error) -> bool {
    crate::error::exit_code(e) == ExitCode::from(2)
}

#[test]
fn a_rollout_is_published_signed_by_the_repository_key() {
    let f = Fixture::new();
    let signer = signing::repository_key(&f.repo).unwrap();
    let v1 = f.build(REF, "1.0", Some(&signer));

    // Nothing yet: the commit is available to every host.
    let shown = apply(&opts(&f, REF, None), 1000).unwrap();
    assert_eq!((shown.rollout.as_ref(), shown.progress), (None, 1.0));
    assert!(
        describe(&shown).contains("no rollout, available to every host"),
        "{}",
        describe(&shown)
    );

    let r = apply(&opts(&f, REF, start(1000, 100, 0.2)), 1050).unwrap();
    let want = Rollout {
        ostree_ref: REF.into(),
        commit: v1.checksum.clone(),
        start: 1000,
        duration_secs: 100,
        start_fraction: 0.2,
        paused_at: None,
        complete: false,
    };
    assert_eq!(r.rollout.as_ref(), Some(&want));
    assert_eq!(
        (r.done.as_deref(), r.version.as_deref()),
        (Some("started"), Some("1.0"))
    );
    assert!((r.progress - 0.6).abs() < 1e-9, "{}", r.progress);
    let text = describe(&r);
    for line in [
        &format!(
            "{REF} {} (version 1.0): rollout started",
            &v1.checksum[..12]
        ),
        "start:          1970-01-01T00:16:40Z",
        "duration:       100s",
        "start fraction: 0.2",
        "progress now:   0.600",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    // Read back through the summary, and shown from it.
    assert_eq!(document(&f, REF), Some(want.clone()));
    assert_eq!(
        apply(&opts(&f, REF, None), 1050).unwrap().rollout,
        Some(want)
    );

    // A host whose remote trusts the repository's key accepts the
    // document and the summary; one that trusts another key refuses both.
    let stranger = signing::repository_key(&f.root.join("elsewhere")).unwrap();
    let host = host(&f);
    host_remote(&f, &host, "berth", signer.public_key());
    host_remote(&f, &host, "stranger", stranger.public_key());
    let doc = published(&f, REF).unwrap();
    berth_sysroot::rollout::verify(&host, "berth", &doc).unwrap();
    let e = berth_sysroot::rollout::verify(&host, "stranger", &doc).unwrap_err();
    assert!(format!("{e:#}").contains("signature"), "{e:#}");
    // A document changed after signing is refused too.
    let forged = berth_sysroot::rollout::SignedDoc {
        doc: String::from_utf8(doc.doc.clone())
            .unwrap()
            .replace("\"complete\":false", "\"complete\":true")
            .into_bytes(),
        ..doc.clone()
    };
    assert_ne!(forged.doc, doc.doc);
    assert!(berth_sysroot::rollout::verify(&host, "berth", &forged).is_err());

    let summary = std::fs::read(f.repo.join("summary")).unwrap();
    let sig = std::fs::read(f.repo.join("summary.sig")).unwrap();
    let check = |remote: &str| {
        host.verify_summary(
            remote,
            &glib::Bytes::from(summary.as_slice()),
            &glib::Bytes::from(sig.as_slice()),
            gio::Cancellable::NONE,
        )
        .and_then(|r| r.require_valid_signature())
    };
    check("berth").unwrap();
    assert!(check("stranger").is_err());
}

#[test]
fn pause_resume_and_complete_change_the_signed_document() {
    let f = Fixture::new();
    let signer = signing::repository_key(&f.repo).unwrap();
    f.build(REF, "1", Some(&signer));
    apply(&opts(&f, REF, start(1000, 100, 0.2)), 1000).unwrap();

    let r = apply(&opts(&f, REF, change(Change::Pause)), 1050).unwrap();
    assert_eq!(r.done.as_deref(), Some("paused"));
    let paused = document(&f, REF).unwrap();
    assert_eq!(paused.paused_at, Some(1050));
    assert!(
        (paused.progress(5000) - 0.6).abs() < 1e-9,
        "it stands still"
    );
    assert!(describe(&r).contains("(paused since 1970-01-01T00:17:30Z)"));
    // Pausing again changes nothing.
    let again = apply(&opts(&f, REF, change(Change::Pause)), 1070).unwrap();
    assert_eq!(again.done.as_deref(), Some("already paused"));
    assert_eq!(document(&f, REF), Some(paused));

    // Resumed 30 s later: the start moves 30 s, progress goes on from 0.6.
    let r = apply(&opts(&f, REF, change(Change::Resume)), 1080).unwrap();
    assert_eq!(r.done.as_deref(), Some("resumed"));
    let resumed = document(&f, REF).unwrap();
    assert_eq!((resumed.start, resumed.paused_at), (1030, None));
    assert!((resumed.progress(1080) - 0.6).abs() < 1e-9);
    assert!((resumed.progress(1105) - 0.8).abs() < 1e-9);
    let again = apply(&opts(&f, REF, change(Change::Resume)), 1090).unwrap();
    assert_eq!(again.done.as_deref(), Some("not paused"));

    let r = apply(&opts(&f, REF, change(Change::Complete)), 1090).unwrap();
    assert_eq!((r.done.as_deref(), r.progress), (Some("completed"), 1.0));
    let complete = document(&f, REF).unwrap();
    assert!(complete.complete && complete.admits(1.0, 0));
    assert_eq!(
        apply(&opts(&f, REF, change(Change::Complete)), 1100)
            .unwrap()
            .done
            .as_deref(),
        Some("already complete")
    );
    let e = apply(&opts(&f, REF, change(Change::Pause)), 1100).unwrap_err();
    assert!(is_usage_error(&e), "{e:#}");
    assert!(e.to_string().contains("nothing to pause"), "{e:#}");

    // Each change was signed anew.
    let host = host(&f);
    host_remote(&f, &host, "berth", signer.public_key());
    berth_sysroot::rollout::verify(&host, "berth", &published(&f, REF).unwrap()).unwrap();
}

#[test]
fn other_refs_keep_their_documents() {
    let f = Fixture::new();
    let signer = signing::repository_key(&f.repo).unwrap();
    f.build(REF, "1", Some(&signer));
    f.build(OTHER, "7", Some(&signer));
    apply(&opts(&f, REF, start(1000, 100, 0.2)), 1000).unwrap();
    apply(&opts(&f, OTHER, start(2000, 50, 0.5)), 2000).unwrap();
    apply(&opts(&f, REF, change(Change::Pause)), 2010).unwrap();
    assert_eq!(document(&f, OTHER).unwrap().start, 2000);
    assert_eq!(document(&f, REF).unwrap().paused_at, Some(2010));
    // And the summary still lists both refs.
    let s = berth_sysroot::rollout::read_repo_summary(&f.repo).unwrap();
    assert_eq!(s.refs.keys().collect::<Vec<_>>(), [OTHER, REF]);
}

#[test]
fn unknown_refs_missing_rollouts_and_unsigned_repositories_are_usage_errors() {
    let f = Fixture::new();
    let signer = signing::repository_key(&f.repo).unwrap();
    f.build(REF, "1", Some(&signer));
    let summary = std::fs::read(f.repo.join("summary")).unwrap();

    let e = apply(&opts(&f, "berth/nope/x86_64", None), 0).unwrap_err();
    assert!(is_usage_error(&e), "{e:#}");
    assert!(
        e.to_string()
            .contains(&format!("has no ref berth/nope/x86_64 (its refs: {REF})")),
        "{e:#}"
    );
    for c in [Change::Pause, Change::Resume, Change::Complete] {
        let e = apply(&opts(&f, REF, change(c)), 0).unwrap_err();
        assert!(is_usage_error(&e), "{e:#}");
        assert!(
            e.to_string()
                .contains(&format!("has no rollout to {}", c.verb())),
            "{e:#}"
        );
    }
    // Nothing was written.
    assert_eq!(std::fs::read(f.repo.join("summary")).unwrap(), summary);

    let e = apply(
        &RolloutOpts {
            repo: f.root.join("no-repo"),
            ..opts(&f, REF, None)
        },
        0,
    )
    .unwrap_err();
    assert!(is_usage_error(&e), "{e:#}");
    assert!(e.to_string().contains("not an OSTree repository"), "{e:#}");
}

#[test]
fn a_repository_without_its_key_cannot_publish_a_rollout() {
    let f = Fixture::new();
    f.build(REF, "1", None);
    let e = apply(&opts(&f, REF, start(0, 10, 0.1)), 0).unwrap_err();
    assert!(is_usage_error(&e), "{e:#}");
    assert!(e.to_string().contains("a rollout must be signed"), "{e:#}");
    // No key was made for it, and nothing published.
    assert!(!f.root.join("repo.signing").exists());
    assert_eq!(published(&f, REF), None);
    // Showing needs no key.
    assert_eq!(apply(&opts(&f, REF, None), 0).unwrap().rollout, None);
}

#[test]
fn a_document_for_an_older_commit_does_not_apply() {
    let f = Fixture::new();
    let signer = signing::repository_key(&f.repo).unwrap();
    let v1 = f.build(REF, "1", Some(&signer));
    apply(&opts(&f, REF, start(1000, 100, 0.2)), 1000).unwrap();
    let old = published(&f, REF).unwrap();
    f.build(REF, "2", Some(&signer));
    // Put v1's document back beside v2, as an older berth would have
    // left it.
    let docs = BTreeMap::from([(REF.to_string(), old)]);
    crate::summary::regenerate(&f.repo(), &docs, Some(&signer)).unwrap();
    assert_eq!(document(&f, REF).unwrap().commit, v1.checksum);

    let shown = apply(&opts(&f, REF, None), 1000).unwrap();
    assert_eq!((shown.rollout, shown.progress), (None, 1.0));
    let e = apply(&opts(&f, REF, change(Change::Pause)), 1000).unwrap_err();
    assert!(is_usage_error(&e), "{e:#}");
}

#[test]
fn resuming_adds_the_paused_time_to_the_start() {
    let r = |paused_at| Rollout {
        ostree_ref: REF.into(),
        commit: "c".into(),
        start: 100,
        duration_secs: 1000,
        start_fraction: 0.0,
        paused_at,
        complete: false,
    };
    let resume = Action::Change(Change::Resume);
    let Outcome::Write(next) = plan(&resume, REF, "c", Some(&r(Some(600))), 900).unwrap() else {
        panic!("nothing written")
    };
    assert_eq!((next.start, next.paused_at), (400, None));
    assert_eq!(next.progress(900), r(Some(600)).progress(600));
    // Paused before it began: the start moves as much.
    let Outcome::Write(next) = plan(&resume, REF, "c", Some(&r(Some(50))), 70).unwrap() else {
        panic!("nothing written")
    };
    assert_eq!(next.start, 120);
    // A start with no time given starts now, for the commit given.
    let now = Action::Start(Start {
        start: None,
        duration_secs: 10,
        start_fraction: 0.5,
    });
    let Outcome::Write(next) = plan(&now, REF, "c2", Some(&r(None)), 4242).unwrap() else {
        panic!("nothing written")
    };
    assert_eq!((next.start, next.commit.as_str()), (4242, "c2"));
}

#[test]
fn options_parse_as_the_manifest_writes_durations() {
    assert_eq!(parse_duration_secs("24h"), Ok(86_400));
    assert_eq!(parse_duration_secs("0s"), Ok(0));
    assert!(parse_duration_secs("1500ms").is_err());
    assert_eq!(parse_fraction("0.05"), Ok(0.05));
    assert!(parse_fraction("NaN").is_err() && parse_fraction("-0.1").is_err());
    assert_eq!(parse_start("2026-12-01T22:00:00Z"), Ok(1_796_162_400));
    assert!(parse_start("1969-12-31T23:59:59Z").is_err());
    assert_eq!(duration(5400), "90m");
    assert_eq!(duration(100), "100s");
}
