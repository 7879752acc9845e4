//! Benchmark (not a test): what an upgrade downloads, against what a
//! full-image A/B update would. Run by `bench/run` (or alone:
//! `cargo run --release -p berth-qemu-tests --example upgrade_payload`),
//! it prints markdown table rows:
//!
//! - a real `berthctl upgrade` in a booted v1 host to a v2 that changes
//!   one file's worth (the version: os-release, the host configuration,
//!   one service's command line), pulled through the static delta from
//!   `berth serve`: bytes fetched and wall time as berthctl reports them,
//!   and the wall time of the whole command seen from the host;
//! - a kernel change, from the served repository: the compressed objects
//!   of everything under /usr/lib/modules/<kver> (kernel, initramfs,
//!   modules), which a new kernel replaces whole (static deltas carry
//!   changed files whole; Debian 12's mirror holds one kernel version, so
//!   this is computed from the objects rather than pulled).
//!
//! Both against the raw image's allocated size.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_qemu_tests::command::run_stdout;
use berth_qemu_tests::{READY_TIMEOUT, UpdateServer, Vm, VmOptions, image};

const V1: &str = "qemu-tests/manifests/upgrade-v1.toml";
const V2: &str = "qemu-tests/manifests/upgrade-v2.toml";
const REF: &str = "berth/upgrade/x86_64";
const MIB: f64 = 1024.0 * 1024.0;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let v1 = image(Path::new(V1));
    let image_bytes = std::fs::metadata(&v1)?.blocks() * 512;
    let server = UpdateServer::start(&v1)?;
    server.publish(Path::new(V2))?;

    let mut vm = Vm::boot(
        &v1,
        VmOptions {
            persistent_copy: true,
            guest_forwards: vec![server.forward()],
            ..VmOptions::default()
        },
    )?;
    vm.wait_for(
        "berth-init: ready image=upgrade version=1.0.0",
        READY_TIMEOUT,
    )?;
    let started = Instant::now();
    let (code, out) = vm.run_shell("berthctl upgrade", Duration::from_secs(600))?;
    let wall = started.elapsed();
    if code != 0 {
        return Err(format!("berthctl upgrade failed ({code}):\n{out}").into());
    }
    // "berthctl: deployed 2.0.0 (…): fetched 41.2 KiB in 3.1s; …"
    let line = out
        .lines()
        .find(|l| l.contains("fetched"))
        .ok_or_else(|| format!("no \"fetched\" in:\n{out}"))?;
    let fetched_text = line
        .split("fetched ")
        .nth(1)
        .and_then(|r| r.split(" in ").next())
        .unwrap_or(line)
        .trim()
        .to_string();
    let fetched =
        parse_human(&fetched_text).ok_or_else(|| format!("cannot read {fetched_text:?}"))?;
    drop(vm);

    let kernel = kernel_objects(&server.repo)?;
    let pct = |b: u64| 100.0 * b as f64 / image_bytes as f64;
    println!(
        "| Upgrade, one-file change: bytes fetched (berthctl) | {} ({:.3}% of the {:.1} MiB image); pull+deploy {} (berthctl), {:.1}s whole command | A/B: {:.1} MiB | ≤ 1% of the image | {} |",
        fetched_text,
        pct(fetched),
        image_bytes as f64 / MIB,
        line.split(" in ")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .unwrap_or("?"),
        wall.as_secs_f64(),
        image_bytes as f64 / MIB,
        if pct(fetched) <= 1.0 { "met" } else { "missed" },
    );
    println!(
        "| Upgrade, kernel change: objects under /usr/lib/modules (computed) | {:.1} MiB ({:.1}% of the image) | A/B: {:.1} MiB | (none) | - |",
        kernel as f64 / MIB,
        pct(kernel),
        image_bytes as f64 / MIB,
    );
    Ok(())
}

/// "41.2 KiB" → bytes.
fn parse_human(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let number: f64 = parts.next()?.parse().ok()?;
    let unit = match parts.next().unwrap_or("B") {
        "B" | "bytes" => 1.0,
        "KiB" => 1024.0,
        "MiB" => MIB,
        "GiB" => MIB * 1024.0,
        _ => return None,
    };
    Some((number * unit) as u64)
}

/// Sum of the archive-repo objects (`.filez`, compressed as served) of the
/// files under /usr/lib/modules in the ref's commit.
fn kernel_objects(repo: &Path) -> Result<u64, Box<dyn std::error::Error>> {
    let listing = run_stdout(
        Command::new("ostree")
            .arg(format!("--repo={}", repo.display()))
            .args(["ls", "-R", "-C", REF, "/usr/lib/modules"]),
    )?;
    let mut total = 0;
    for line in listing.lines() {
        // mode uid gid size checksum path
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(mode), Some(sum)) = (fields.first(), fields.get(4)) else {
            continue;
        };
        if !mode.starts_with('-') || sum.len() != 64 {
            continue;
        }
        let object = repo
            .join("objects")
            .join(&sum[..2])
            .join(format!("{}.filez", &sum[2..]));
        total += std::fs::metadata(&object)?.len();
    }
    Ok(total)
}
