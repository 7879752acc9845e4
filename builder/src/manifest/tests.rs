//! Each manifest error names the file, the key path and the line:column.

use std::path::Path;

use super::*;

const GOOD: &str = r#"
name = "demo"
version = "1.2.0"

[source]
packages = ["busybox-static"]

[disk]
size = "2G"

[[service]]
name = "web"
command = ["httpd", "-f"]
ready = "tcp:80"

[[service]]
name = "worker"
command = ["worker"]
after = ["web"]
restart = "on-failure"
"#;

fn parse(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse(Path::new("m.toml"), text)
}

fn err(text: &str) -> ManifestError {
    parse(text).expect_err("manifest should be rejected")
}

#[test]
fn good_manifest_parses_with_defaults() {
    let m = parse(GOOD).unwrap();
    assert_eq!(m.name, "demo");
    assert_eq!(m.source.suite, "bookworm");
    assert_eq!(m.source.packages[0].value, "busybox-static");
    assert_eq!(m.disk.size.value, 2 << 30);
    assert_eq!(m.disk.esp_size.value, DEFAULT_ESP_SIZE);
    assert_eq!(m.services[0].ready, Readiness::Tcp { port: 80 });
    assert_eq!(m.services[1].restart, Restart::OnFailure);
    assert_eq!(m.kernel.package.value, "linux-image-amd64");
    assert_eq!(m.network, Network::None);
    assert_eq!(m.host.watchdog_timeout_ms, 60_000);
}

#[test]
fn watchdog_timeouts() {
    let host =
        |v: &str| format!("name = \"x\"\nversion = \"1\"\n[host]\nwatchdog-timeout = \"{v}\"\n");
    assert_eq!(
        parse(&host("15s")).unwrap().host.watchdog_timeout_ms,
        15_000
    );
    assert_eq!(parse(&host("off")).unwrap().host.watchdog_timeout_ms, 0);
    assert_eq!(parse(&host("0s")).unwrap().host.watchdog_timeout_ms, 0);
    for bad in ["2s", "2h", "soon"] {
        let e = err(&host(bad));
        assert_eq!(
            (e.key.as_str(), e.position.map(|p| p.0)),
            ("host.watchdog-timeout", Some(4)),
            "{e}"
        );
    }
}

#[test]
fn missing_file_names_the_file() {
    let e = Manifest::load(Path::new("/nonexistent/m.toml")).unwrap_err();
    assert_eq!(e.file, Path::new("/nonexistent/m.toml"));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/m.toml: cannot read the manifest"),
        "{e}"
    );
}

#[test]
fn bad_toml_has_a_position() {
    let e = err("name = \"x\"\nversion = \n");
    assert_eq!(e.position.map(|p| p.0), Some(2), "{e}");
    assert!(e.to_string().starts_with("m.toml:2:"), "{e}");
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = err("name = \"x\"\nversion = \"1\"\n[disk]\nsize = \"1G\"\nsise = \"2G\"\n");
    assert_eq!(e.position, Some((5, 1)), "{e}");
    assert!(e.message.contains("unknown field `sise`"), "{e}");
    assert_eq!(e.key, "disk.sise", "{e}");
}

#[test]
fn unknown_key_in_a_service_names_its_index() {
    let e = err(
        "name = \"x\"\nversion = \"1\"\n[[service]]\nname = \"a\"\ncommand = [\"a\"]\nrestat = \"always\"\n",
    );
    assert_eq!(e.key, "service[0].restat", "{e}");
    assert_eq!(e.position, Some((6, 1)), "{e}");
}

#[test]
fn wrong_type_names_key_and_line() {
    let e = err("name = \"x\"\nversion = \"1\"\n[host]\ndebug-shell = \"yes\"\n");
    assert_eq!(e.key, "host.debug-shell", "{e}");
    assert_eq!(e.position.map(|p| p.0), Some(4), "{e}");
    assert!(e.message.contains("bool"), "{e}");
}

#[test]
fn wrong_type_of_a_spanned_value_names_the_key() {
    let e = err(
        "name = \"x\"\nversion = \"1\"\n[[container]]\nname = \"web\"\nimage = \"oci:l:1\"\ncpus = \"half\"\n",
    );
    assert_eq!(
        (e.key.as_str(), e.position),
        ("container[0].cpus", Some((6, 8))),
        "{e}"
    );
}

#[test]
fn missing_required_key() {
    let e = err("name = \"x\"\n");
    assert!(e.message.contains("missing field `version`"), "{e}");
}

#[test]
fn empty_name() {
    let e = err("name = \"\"\nversion = \"1\"\n");
    assert_eq!((e.key.as_str(), e.position), ("name", Some((1, 8))), "{e}");
    assert!(e.message.contains("must not be empty"));
}

#[test]
fn invalid_name() {
    let e = err("version = \"1\"\nname = \"My Image\"\n");
    assert_eq!((e.key.as_str(), e.position), ("name", Some((2, 8))), "{e}");
    assert!(
        e.to_string()
            .starts_with("m.toml:2:8: name: \"My Image\" is not a valid name"),
        "{e}"
    );
}

#[test]
fn invalid_version() {
    let e = err("name = \"x\"\nversion = \"v1 beta\"\n");
    assert_eq!(
        (e.key.as_str(), e.position),
        ("version", Some((2, 11))),
        "{e}"
    );
}

#[test]
fn invalid_package_name() {
    let e = err("name = \"x\"\nversion = \"1\"\n[source]\npackages = [\"ok\", \"Bad Name\"]\n");
    assert_eq!(e.key, "source.packages[1]");
    assert_eq!(e.position, Some((4, 19)), "{e}");
}

#[test]
fn bad_size_and_too_small_disk() {
    let e = err("name = \"x\"\nversion = \"1\"\n[disk]\nsize = \"lots\"\n");
    assert_eq!(
        (e.key.as_str(), e.position.map(|p| p.0)),
        ("disk.size", Some(4)),
        "{e}"
    );
    let e = err("name = \"x\"\nversion = \"1\"\n[disk]\nsize = \"100M\"\n");
    assert_eq!(e.key, "disk.size");
    assert!(e.message.contains("no room"), "{e}");
}

#[test]
fn user_and_group_cannot_carry_passwd_fields() {
    let base = "name = \"x\"\nversion = \"1\"\n[[service]]\nname = \"a\"\ncommand = [\"a\"]\n";
    let e = err(&format!("{base}user = \"web:x:0:0\"\n"));
    assert_eq!(
        (e.key.as_str(), e.position),
        ("service[0].user", Some((6, 8))),
        "{e}"
    );
    assert!(e.to_string().contains("m.toml"), "{e}");
    let e = err(&format!("{base}group = \"web\\nroot\"\n"));
    assert_eq!(e.key, "service[0].group", "{e}");
    let e = err(&format!("{base}user = \"a,b\"\n"));
    assert_eq!(e.key, "service[0].user", "{e}");
    let m = parse(&format!("{base}user = \"www-data\"\ngroup = \"1000\"\n")).unwrap();
    assert_eq!(m.services[0].user.as_deref(), Some("www-data"));
    assert_eq!(m.services[0].group.as_deref(), Some("1000"));
}

#[test]
fn service_errors() {
    let base = "name = \"x\"\nversion = \"1\"\n[[service]]\nname = \"a\"\ncommand = [\"a\"]\n";
    let e = err(&format!("{base}restart = \"sometimes\"\n"));
    assert_eq!(
        (e.key.as_str(), e.position),
        ("service[0].restart", Some((6, 11))),
        "{e}"
    );
    let e = err(&format!("{base}ready = \"udp:53\"\n"));
    assert_eq!(e.key, "service[0].ready", "{e}");
    let e = err(&format!("{base}after = [\"ghost\"]\n"));
    assert_eq!(e.key, "service[0].after[0]", "{e}");
    assert!(
        e.message
            .contains("no service or container named \"ghost\"")
    );
    let e = err(&format!("{base}stop-timeout = \"soon\"\n"));
    assert_eq!(e.key, "service[0].stop-timeout", "{e}");
    let e = err(&format!(
        "{base}[[service]]\nname = \"a\"\ncommand = [\"b\"]\n"
    ));
    assert!(e.message.contains("already exists"), "{e}");
    let e = err("name = \"x\"\nversion = \"1\"\n[[service]]\nname = \"a\"\ncommand = []\n");
    assert_eq!(e.key, "service[0].command");
}

#[test]
fn container_errors_name_the_container() {
    let base = "name = \"x\"\nversion = \"1\"\n[[container]]\nname = \"web\"\n";
    let e = err(&format!("{base}image = \"ftp://host/web:1\"\n"));
    assert_eq!(
        (e.key.as_str(), e.position),
        ("container[0].image", Some((5, 9))),
        "{e}"
    );
    assert!(
        e.message.contains(
            "container \"web\": image \"ftp://host/web:1\" does not start with a known transport"
        ),
        "{e}"
    );
    let ok = format!("{base}image = \"oci:layout:1\"\n");
    let e = err(&format!("{ok}volumes = [\"data:relative\"]\n"));
    assert_eq!(e.key, "container[0].volumes[0]", "{e}");
    let e = err(&format!("{ok}memory = \"1M\"\n"));
    assert_eq!(e.key, "container[0].memory", "{e}");
    let e = err(&format!("{ok}network = \"bridge\"\n"));
    assert_eq!(e.key, "container[0].network", "{e}");
    let m = parse(&format!("{ok}memory = \"128M\"\ncpus = 0.5\n")).unwrap();
    assert_eq!(m.containers[0].memory, Some(128 << 20));
    assert_eq!(m.containers[0].network, ContainerNetwork::Host);
    assert_eq!(
        m.containers[0].pids_limit,
        crate::container::spec::DEFAULT_PIDS_LIMIT,
        "the default pids-limit"
    );
}

#[test]
fn pids_limit_is_checked() {
    let base =
        "name = \"x\"\nversion = \"1\"\n[[container]]\nname = \"web\"\nimage = \"oci:layout:1\"\n";
    let m = parse(&format!("{base}pids-limit = 64\n")).unwrap();
    assert_eq!(m.containers[0].pids_limit, 64);
    for bad in ["0", "-1", "4194305"] {
        let e = err(&format!("{base}pids-limit = {bad}\n"));
        assert_eq!(
            (e.key.as_str(), e.position),
            ("container[0].pids-limit", Some((6, 14))),
            "{e}"
        );
        assert!(
            e.message.contains("not a process count from 1 to 4194304"),
            "{e}"
        );
        assert!(e.to_string().contains("6:14"), "{e}");
    }
    let e = err(&format!("{base}pids-limit = \"many\"\n"));
    assert_eq!(
        (e.key.as_str(), e.position),
        ("container[0].pids-limit", Some((6, 14))),
        "{e}"
    );
    let e = err(&format!("{base}pids_limit = 64\n"));
    assert!(e.message.contains("unknown field"), "{e}");
}

#[test]
fn after_cycles_are_rejected() {
    let e = err(
        "name = \"x\"\nversion = \"1\"\n[[service]]\nname = \"a\"\ncommand = [\"a\"]\nafter = [\"b\"]\n[[service]]\nname = \"b\"\ncommand = [\"b\"]\nafter = [\"a\"]\n",
    );
    assert!(e.message.contains("cycle: a -> b -> a"), "{e}");
}

#[test]
fn network_modes() {
    let m = parse("name = \"x\"\nversion = \"1\"\n[network]\nmode = \"dhcp\"\n").unwrap();
    assert!(matches!(m.network, Network::Dhcp { ref interface, .. } if interface == "eth0"));
    let e = err(
        "name = \"x\"\nversion = \"1\"\n[network]\nmode = \"static\"\naddress = \"10.0.2.15\"\n",
    );
    assert_eq!(e.key, "network.address", "{e}");
    let e = err("name = \"x\"\nversion = \"1\"\n[network]\nmode = \"carrier-pigeon\"\n");
    assert_eq!(
        (e.key.as_str(), e.position),
        ("network.mode", Some((4, 8))),
        "{e}"
    );
}

#[test]
fn dhcp_service_name_is_reserved_with_dhcp() {
    let e = err(
        "name = \"x\"\nversion = \"1\"\n[network]\nmode = \"dhcp\"\n[[service]]\nname = \"dhcp\"\ncommand = [\"x\"]\n",
    );
    assert_eq!(
        (e.key.as_str(), e.position),
        ("service[0].name", Some((6, 8))),
        "{e}"
    );
}

#[test]
fn error_at_locates_later_findings() {
    let m = parse(GOOD).unwrap();
    let p = &m.source.packages[0];
    let e = m.error_at(
        &p.key,
        &p.span,
        "the mirror has no package \"busybox-static\"",
    );
    assert_eq!(
        e.to_string(),
        "m.toml:6:13: source.packages[0]: the mirror has no package \"busybox-static\""
    );
}

#[test]
fn line_col_counts_from_one() {
    assert_eq!(line_col("ab\ncd", 0), (1, 1));
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
}

const UPDATE: &str = "name = \"x\"\nversion = \"1\"\n[update]\nurl = \"http://u.example\"\n";

#[test]
fn updates_are_signed_by_the_repository_key_unless_told_otherwise() {
    let m = parse(UPDATE).unwrap();
    assert_eq!(m.trust(), UpdateTrust::RepositoryKey);
    let m = parse(&format!("{UPDATE}verify = true\n")).unwrap();
    assert_eq!(m.trust(), UpdateTrust::RepositoryKey);
    // No [update] at all: the repository is signed all the same.
    let m = parse("name = \"x\"\nversion = \"1\"\n").unwrap();
    assert_eq!(m.trust(), UpdateTrust::RepositoryKey);
    let m = parse(&format!("{UPDATE}verify = false\n")).unwrap();
    assert!(
        matches!(m.trust(), UpdateTrust::Off(ref v) if v.key == "update.verify"),
        "{:?}",
        m.trust()
    );
    let m = parse(&format!(
        "{UPDATE}gpg-key = \"k.asc\"\ngpg-homedir = \"gnupg\"\ngpg-key-id = \"0xB0A5C0DE12345678\"\n"
    ))
    .unwrap();
    let UpdateTrust::Manifest(k) = m.trust() else {
        panic!("{:?}", m.trust())
    };
    assert_eq!(k.public.value, Path::new("k.asc"));
    assert_eq!(k.key_id.value, "0xB0A5C0DE12345678");
}

#[test]
fn a_partial_gpg_configuration_names_what_is_missing() {
    let e = err(&format!("{UPDATE}gpg-key-id = \"B0A5C0DE12345678\"\n"));
    assert_eq!(
        (e.key.as_str(), e.position),
        ("update.gpg-key-id", Some((5, 14))),
        "{e}"
    );
    assert!(
        e.message
            .starts_with("needs update.gpg-key and update.gpg-homedir too"),
        "{e}"
    );
    let e = err(&format!(
        "{UPDATE}gpg-key = \"k.asc\"\ngpg-homedir = \"gnupg\"\n"
    ));
    assert_eq!(e.key, "update.gpg-key", "{e}");
    assert!(e.message.starts_with("needs update.gpg-key-id too"), "{e}");
    assert!(
        e.to_string().starts_with("m.toml:5:11: update.gpg-key: "),
        "{e}"
    );
}

#[test]
fn verify_false_with_a_key_is_a_contradiction() {
    let e = err(&format!(
        "{UPDATE}verify = false\ngpg-homedir = \"gnupg\"\n"
    ));
    assert_eq!(
        (e.key.as_str(), e.position),
        ("update.gpg-homedir", Some((6, 15))),
        "{e}"
    );
    assert!(e.message.contains("update.verify = false"), "{e}");
    let e = err(&format!("{UPDATE}verify = \"no\"\n"));
    assert_eq!(e.key, "update.verify", "{e}");
}

#[test]
fn gpg_key_ids_are_hex() {
    let e = err(&format!(
        "{UPDATE}gpg-key = \"k.asc\"\ngpg-homedir = \"gnupg\"\ngpg-key-id = \"me@example.com\"\n"
    ));
    assert_eq!(e.key, "update.gpg-key-id", "{e}");
    assert!(e.message.contains("not a GPG key id"), "{e}");
}

/// `[update]` with `extra` keys after its URL (line 5 on).
fn policy(extra: &str) -> Result<Manifest, ManifestError> {
    parse(&format!("{UPDATE}{extra}"))
}

fn policy_err(extra: &str) -> (String, Option<usize>, String) {
    let e = policy(extra).expect_err("the policy should be rejected");
    (e.key.clone(), e.position.map(|p| p.0), e.to_string())
}

#[test]
fn the_update_policy_defaults_to_manual_every_five_minutes() {
    let m = policy("").unwrap();
    assert_eq!(m.update.unwrap().policy, UpdatePolicy::default());
}

#[test]
fn a_periodic_policy_with_windows() {
    let m = policy(
        "strategy = \"periodic\"\ninterval = \"90s\"\nwariness = 0.25\n\
         [[update.window]]\ndays = [\"Sat\", \"sunday\"]\nstart = \"22:30\"\nlength = \"90m\"\n\
         [[update.window]]\ndays = [\"Wed\"]\nstart = \"3:00\"\nlength = \"168h\"\n",
    )
    .unwrap();
    let p = m.update.unwrap().policy;
    use berth_hostapi::update::{Strategy, Weekday, Window};
    assert_eq!(p.strategy, Strategy::Periodic);
    assert_eq!(p.interval_ms, 90_000);
    assert_eq!(p.wariness, Some(0.25));
    assert_eq!(
        p.windows,
        [
            Window {
                days: vec![Weekday::Sat, Weekday::Sun],
                start_minute: 22 * 60 + 30,
                length_minutes: 90,
            },
            Window {
                days: vec![Weekday::Wed],
                start_minute: 180,
                length_minutes: 7 * 24 * 60,
            }
        ]
    );
    // An integer wariness is a number too.
    let m = policy("strategy = \"immediate\"\nwariness = 1\n").unwrap();
    let p = m.update.unwrap().policy;
    assert_eq!((p.strategy, p.wariness), (Strategy::Immediate, Some(1.0)));
}

#[test]
fn update_policy_errors_name_the_key_and_the_line() {
    let (key, line, text) = policy_err("strategy = \"sometimes\"\n");
    assert_eq!((key.as_str(), line), ("update.strategy", Some(5)), "{text}");
    assert!(text.contains("unknown strategy \"sometimes\""), "{text}");
    assert!(text.starts_with("m.toml:5:12: update.strategy: "), "{text}");

    let (key, line, text) = policy_err("strategy = \"periodic\"\n");
    assert_eq!((key.as_str(), line), ("update.strategy", Some(5)), "{text}");
    assert!(text.contains("[[update.window]]"), "{text}");

    let window = "[[update.window]]\ndays = [\"Sat\"]\nstart = \"22:30\"\nlength = \"1h\"\n";
    for strategy in ["", "strategy = \"immediate\"\n", "strategy = \"manual\"\n"] {
        let (key, line, text) = policy_err(&format!("{strategy}{window}"));
        let at = 5 + usize::from(!strategy.is_empty());
        assert_eq!(
            (key.as_str(), line),
            ("update.window[0]", Some(at)),
            "{text}"
        );
        assert!(text.contains("strategy = \"periodic\""), "{text}");
    }

    let periodic = "strategy = \"periodic\"\n[[update.window]]\n";
    let cases = [
        (
            "days = [\"Sat\", \"Caturday\"]\nstart = \"1:00\"\nlength = \"1h\"\n",
            "update.window[0].days[1]",
            7,
            "not a day",
        ),
        (
            "days = []\nstart = \"1:00\"\nlength = \"1h\"\n",
            "update.window[0].days",
            7,
            "at least one day",
        ),
        (
            "days = [\"Sa\"]\nstart = \"1:00\"\nlength = \"1h\"\n",
            "update.window[0].days[0]",
            7,
            "not a day",
        ),
        (
            "days = [\"Sat\"]\nstart = \"24:00\"\nlength = \"1h\"\n",
            "update.window[0].start",
            8,
            "hh:mm",
        ),
        (
            "days = [\"Sat\"]\nstart = \"10:5\"\nlength = \"1h\"\n",
            "update.window[0].start",
            8,
            "hh:mm",
        ),
        (
            "days = [\"Sat\"]\nstart = \"noon\"\nlength = \"1h\"\n",
            "update.window[0].start",
            8,
            "hh:mm",
        ),
        (
            "days = [\"Sat\"]\nstart = \"1:00\"\nlength = \"90s\"\n",
            "update.window[0].length",
            9,
            "whole number of minutes",
        ),
        (
            "days = [\"Sat\"]\nstart = \"1:00\"\nlength = \"0m\"\n",
            "update.window[0].length",
            9,
            "out of range",
        ),
        (
            "days = [\"Sat\"]\nstart = \"1:00\"\nlength = \"169h\"\n",
            "update.window[0].length",
            9,
            "out of range",
        ),
        (
            "days = [\"Sat\"]\nstart = \"1:00\"\nlength = \"long\"\n",
            "update.window[0].length",
            9,
            "not a duration",
        ),
    ];
    for (body, want_key, want_line, want_text) in cases {
        let (key, line, text) = policy_err(&format!("{periodic}{body}"));
        assert_eq!((key.as_str(), line), (want_key, Some(want_line)), "{text}");
        assert!(text.contains(want_text), "{text}");
    }
    // A second window is counted as such.
    let ok = "days = [\"Sat\"]\nstart = \"1:00\"\nlength = \"1h\"\n";
    let (key, line, text) = policy_err(&format!(
        "{periodic}{ok}[[update.window]]\ndays = [\"Sun\"]\nstart = \"1:60\"\nlength = \"1h\"\n"
    ));
    assert_eq!(
        (key.as_str(), line),
        ("update.window[1].start", Some(12)),
        "{text}"
    );

    for bad in ["1.5", "-0.1", "nan"] {
        let (key, line, text) = policy_err(&format!("wariness = {bad}\n"));
        assert_eq!((key.as_str(), line), ("update.wariness", Some(5)), "{text}");
        assert!(text.contains("out of range"), "{text}");
    }
    let (key, line, text) = policy_err("wariness = \"low\"\n");
    assert_eq!((key.as_str(), line), ("update.wariness", Some(5)), "{text}");

    let (key, line, text) = policy_err("interval = \"5s\"\n");
    assert_eq!((key.as_str(), line), ("update.interval", Some(5)), "{text}");
    assert!(text.contains("at least \"10s\""), "{text}");
    let (key, _, text) = policy_err("interval = \"often\"\n");
    assert_eq!(key, "update.interval", "{text}");
    let (key, line, text) = policy_err(&format!("{periodic}{ok}dayz = [\"Sun\"]\n"));
    assert_eq!(
        (key.as_str(), line),
        ("update.window[0].dayz", Some(10)),
        "{text}"
    );
}

#[test]
fn a_fleet_lock_policy_with_and_without_windows() {
    use berth_hostapi::update::{FleetLockPolicy, Strategy};
    let m = policy("strategy = \"fleet-lock\"\nfleet-lock-url = \"http://10.0.2.2:8090/fl\"\n")
        .unwrap();
    let p = m.update.unwrap().policy;
    assert_eq!(p.strategy, Strategy::FleetLock);
    // A trailing slash, so that v1/pre-reboot is appended, and the default group.
    assert_eq!(
        p.fleet_lock,
        Some(FleetLockPolicy {
            url: "http://10.0.2.2:8090/fl/".into(),
            group: "default".into(),
        })
    );
    assert!(p.windows.is_empty());
    let m = policy(
        "strategy = \"fleet-lock\"\nfleet-lock-url = \"https://fl.example/\"\n\
         fleet-lock-group = \"workers.eu-1\"\n\
         [[update.window]]\ndays = [\"Sat\"]\nstart = \"22:30\"\nlength = \"90m\"\n",
    )
    .unwrap();
    let p = m.update.unwrap().policy;
    let f = p.fleet_lock.unwrap();
    assert_eq!(
        (f.url.as_str(), f.group.as_str()),
        ("https://fl.example/", "workers.eu-1")
    );
    assert_eq!(p.windows.len(), 1);
}

#[test]
fn fleet_lock_errors_name_the_key_and_the_line() {
    let (key, line, text) = policy_err("strategy = \"fleet-lock\"\n");
    assert_eq!((key.as_str(), line), ("update.strategy", Some(5)), "{text}");
    assert!(text.contains("add fleet-lock-url"), "{text}");

    for bad in [
        "fl.example:8090",
        "file:///srv/fl",
        "http://",
        "http://a b/",
    ] {
        let (key, line, text) = policy_err(&format!(
            "strategy = \"fleet-lock\"\nfleet-lock-url = \"{bad}\"\n"
        ));
        assert_eq!(
            (key.as_str(), line),
            ("update.fleet-lock-url", Some(6)),
            "{text}"
        );
        assert!(text.contains("not an http:// or https:// URL"), "{text}");
        assert!(
            text.starts_with("m.toml:6:18: update.fleet-lock-url: "),
            "{text}"
        );
    }
    for bad in ["", "a b", "west/1", "ö"] {
        let (key, line, text) = policy_err(&format!(
            "strategy = \"fleet-lock\"\nfleet-lock-url = \"http://fl/\"\nfleet-lock-group = \"{bad}\"\n"
        ));
        assert_eq!(
            (key.as_str(), line),
            ("update.fleet-lock-group", Some(7)),
            "{text}"
        );
        assert!(text.contains("not a FleetLock group"), "{text}");
    }
    // Either key without the strategy.
    for strategy in [
        "",
        "strategy = \"immediate\"\n",
        "strategy = \"periodic\"\n",
    ] {
        for (k, v) in [
            ("fleet-lock-url", "\"http://fl/\""),
            ("fleet-lock-group", "\"default\""),
        ] {
            let window = if strategy.contains("periodic") {
                "[[update.window]]\ndays = [\"Sat\"]\nstart = \"22:30\"\nlength = \"1h\"\n"
            } else {
                ""
            };
            let (key, line, text) = policy_err(&format!("{strategy}{k} = {v}\n{window}"));
            let at = 5 + usize::from(!strategy.is_empty());
            assert_eq!(
                (key.as_str(), line),
                (format!("update.{k}").as_str(), Some(at)),
                "{text}"
            );
            assert!(text.contains("strategy = \"fleet-lock\""), "{text}");
        }
    }
}

const SECURE_BOOT: &str = "name = \"x\"\nversion = \"1\"\n[secure-boot]\nkey = \"sb/db.key\"\ncertificate = \"sb/db.crt\"\n";

#[test]
fn secure_boot_defaults_to_manual_enrollment_of_nothing() {
    assert_eq!(parse(GOOD).unwrap().secure_boot, None);
    let s = parse(SECURE_BOOT).unwrap().secure_boot.unwrap();
    assert_eq!(s.key.value, Path::new("sb/db.key"));
    assert_eq!(s.key.key, "secure-boot.key");
    assert_eq!(s.certificate.value, Path::new("sb/db.crt"));
    assert_eq!((s.enroll_keys, s.enroll), (None, EnrollMode::Manual));
    let s = parse(&format!(
        "{SECURE_BOOT}enroll-keys = \"sb\"\nenroll = \"force\"\n"
    ))
    .unwrap()
    .secure_boot
    .unwrap();
    assert_eq!(s.enroll_keys.unwrap().value, Path::new("sb"));
    assert_eq!(s.enroll, EnrollMode::Force);
    let s = parse(&format!("{SECURE_BOOT}enroll = \"off\"\n"))
        .unwrap()
        .secure_boot
        .unwrap();
    assert_eq!(s.enroll, EnrollMode::Off);
}

#[test]
fn secure_boot_needs_a_key_and_a_certificate() {
    let e = err("name = \"x\"\nversion = \"1\"\n[secure-boot]\nkey = \"db.key\"\n");
    assert_eq!(e.key, "secure-boot", "{e}");
    assert!(e.message.contains("missing field `certificate`"), "{e}");
    assert_eq!(e.position.map(|p| p.0), Some(3), "{e}");
    let e = err(&SECURE_BOOT.replace("\"sb/db.crt\"", "\"\""));
    assert_eq!(
        (e.key.as_str(), e.position),
        ("secure-boot.certificate", Some((5, 15))),
        "{e}"
    );
    let e = err(&format!("{SECURE_BOOT}db = \"x\"\n"));
    assert!(e.message.contains("unknown field `db`"), "{e}");
}

#[test]
fn secure_boot_enroll_modes_must_match_the_keys() {
    let e = err(&format!("{SECURE_BOOT}enroll = \"force\"\n"));
    assert_eq!(
        (e.key.as_str(), e.position),
        ("secure-boot.enroll", Some((6, 10))),
        "{e}"
    );
    assert!(e.message.contains("secure-boot.enroll-keys"), "{e}");
    let e = err(&format!(
        "{SECURE_BOOT}enroll-keys = \"sb\"\nenroll = \"off\"\n"
    ));
    assert_eq!(
        (e.key.as_str(), e.position),
        ("secure-boot.enroll-keys", Some((6, 15))),
        "{e}"
    );
    assert!(e.message.contains("enroll = \"off\""), "{e}");
    let e = err(&format!("{SECURE_BOOT}enroll = \"auto\"\n"));
    assert_eq!(e.key, "secure-boot.enroll", "{e}");
    assert!(
        e.to_string().starts_with(
            "m.toml:6:10: secure-boot.enroll: unknown mode \"auto\" (expected \"manual\""
        ),
        "{e}"
    );
}

#[test]
fn fleet_etcd_lease_ttl_and_announce() {
    let base = "name = \"x\"\nversion = \"1\"\n";
    let m = parse(&format!(
        "{base}[fleet]\netcd = [\"http://10.0.0.1:2379\", \"https://e.example:2379\"]\n\
         [[service]]\nname = \"web\"\ncommand = [\"httpd\"]\nannounce = 8080\n\
         [[container]]\nname = \"db\"\nimage = \"oci:l:1\"\nannounce = 5432\n"
    ))
    .unwrap();
    let fleet = m.fleet.clone().unwrap();
    assert_eq!(
        fleet.etcd,
        ["http://10.0.0.1:2379", "https://e.example:2379"]
    );
    assert_eq!(fleet.lease_ttl_secs, 30);
    assert_eq!(m.services[0].announce, Some(8080));
    assert_eq!(m.containers[0].announce, Some(5432));
    assert_eq!(
        crate::container::service(&m.containers[0]).announce,
        Some(5432)
    );
    let ttl = |t: &str| format!("{base}[fleet]\netcd = [\"http://e:2379\"]\nlease-ttl = \"{t}\"\n");
    assert_eq!(parse(&ttl("1m")).unwrap().fleet.unwrap().lease_ttl_secs, 60);
    for bad in ["4s", "5500ms", "soon"] {
        let e = err(&ttl(bad));
        assert_eq!(
            (e.key.as_str(), e.position),
            ("fleet.lease-ttl", Some((5, 13))),
            "{e}"
        );
    }
    let e = err(&format!("{base}[fleet]\netcd = []\n"));
    assert_eq!(
        (e.key.as_str(), e.position),
        ("fleet.etcd", Some((4, 8))),
        "{e}"
    );
    let e = err(&format!(
        "{base}[fleet]\netcd = [\"http://e:2379\", \"e:2379\"]\n"
    ));
    assert_eq!(
        (e.key.as_str(), e.position),
        ("fleet.etcd[1]", Some((4, 26))),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("m.toml:4:26: fleet.etcd[1]: \"e:2379\" is not an http"),
        "{e}"
    );
    let e = err(&format!(
        "{base}[fleet]\netcd = [\"http://e:2379\"]\nca-file = \"x\"\n"
    ));
    assert_eq!(e.key, "fleet.ca-file", "{e}");
    for port in ["0", "65536", "-1"] {
        let e = err(&format!(
            "{base}[[service]]\nname = \"web\"\ncommand = [\"httpd\"]\nannounce = {port}\n"
        ));
        assert_eq!(
            (e.key.as_str(), e.position),
            ("service[0].announce", Some((6, 12))),
            "{e}"
        );
        assert!(e.message.contains("is not a TCP port"), "{e}");
    }
    let e = err(&format!(
        "{base}[[container]]\nname = \"db\"\nimage = \"oci:l:1\"\nannounce = 0\n"
    ));
    assert_eq!(e.key, "container[0].announce", "{e}");
    // The registry's name is taken only with [fleet].
    let unit = "[[service]]\nname = \"fleet-registry\"\ncommand = [\"x\"]\n";
    parse(&format!("{base}{unit}")).unwrap();
    let e = err(&format!(
        "{base}{unit}[fleet]\netcd = [\"http://e:2379\"]\n"
    ));
    assert_eq!(
        (e.key.as_str(), e.position),
        ("service[0].name", Some((4, 8))),
        "{e}"
    );
    assert!(e.message.contains("fleet registry"), "{e}");
}

#[test]
fn fleet_lock_server_takes_a_config_path_and_its_service_name() {
    let base = "name = \"x\"\nversion = \"1\"\n";
    let m = parse(&format!(
        "{base}[fleet-lock-server]\nconfig = \"etcd/fleet-lock.toml\"\n"
    ))
    .unwrap();
    let lock = m.fleet_lock_server.unwrap();
    assert_eq!(lock.config.value, Path::new("etcd/fleet-lock.toml"));
    assert_eq!(lock.config.key, "fleet-lock-server.config");
    let e = err(&format!("{base}[fleet-lock-server]\nconfig = \" \"\n"));
    assert_eq!(
        (e.key.as_str(), e.position),
        ("fleet-lock-server.config", Some((4, 10))),
        "{e}"
    );
    let e = err(&format!("{base}[fleet-lock-server]\n"));
    assert!(e.message.contains("config"), "{e}");
    let e = err(&format!(
        "{base}[fleet-lock-server]\nconfig = \"a\"\nport = 1\n"
    ));
    assert_eq!(e.key, "fleet-lock-server.port", "{e}");
    // The lock server's name is taken only with the section.
    let unit = "[[service]]\nname = \"fleet-lock\"\ncommand = [\"x\"]\n";
    parse(&format!("{base}{unit}")).unwrap();
    let e = err(&format!(
        "{base}{unit}[fleet-lock-server]\nconfig = \"a\"\n"
    ));
    assert_eq!(
        (e.key.as_str(), e.position),
        ("service[0].name", Some((4, 8))),
        "{e}"
    );
    assert!(e.message.contains("lock server"), "{e}");
}
