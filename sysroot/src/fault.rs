//! Fault points: a testing aid that stops a process right after a chosen
//! step of an ESP change, so a test can cut the power at exactly that
//! moment (the power-cut tests kill QEMU when the stop is announced).
//!
//! Inert unless asked for: with neither `BERTH_FAULT_STOP` in the
//! environment nor the file [`FAULT_FILE`] on the host, [`point`] only
//! counts. When asked:
//!
//! - `list` prints every point (`berth: fault point N: WHAT`) and goes on;
//! - a number `N` prints `berth: fault point N reached: WHAT; stopped` at
//!   the N-th point of the process and then never returns, holding every
//!   lock the process holds, until the machine goes down.
//!
//! The file form (one line, same syntax) serves processes a test cannot
//! give an environment to, such as `berthctl boot-check` started by
//! berth-init; it is removed (and the removal synced) before the process
//! stops, so it fires once.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// The environment variable that asks for fault points.
pub const FAULT_ENV: &str = "BERTH_FAULT_STOP";
/// The file that asks for fault points when the environment cannot.
pub const FAULT_FILE: &str = "/var/lib/berth/fault-stop";

static COUNT: AtomicU32 = AtomicU32::new(0);
static SPEC: Mutex<Option<Option<Spec>>> = Mutex::new(None);

/// What was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    List,
    StopAt(u32),
}

fn parse(text: &str) -> Option<Spec> {
    match text.trim() {
        "list" => Some(Spec::List),
        n => n.parse().ok().filter(|&n| n > 0).map(Spec::StopAt),
    }
}

/// The spec from the environment, else from [`FAULT_FILE`]; read once.
fn spec() -> Option<Spec> {
    let mut guard = SPEC.lock().unwrap_or_else(|e| e.into_inner());
    *guard.get_or_insert_with(|| {
        std::env::var(FAULT_ENV)
            .ok()
            .and_then(|v| parse(&v))
            .or_else(|| {
                std::fs::read_to_string(FAULT_FILE)
                    .ok()
                    .and_then(|v| parse(&v))
            })
    })
}

/// Marks a step; `what` says what has just been done (for the test log).
pub fn point(what: &str) {
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    match spec() {
        None => {}
        Some(Spec::List) => eprintln!("berth: fault point {n}: {what}"),
        Some(Spec::StopAt(at)) if at == n => stop(n, what),
        Some(Spec::StopAt(_)) => {}
    }
}

fn stop(n: u32, what: &str) -> ! {
    let file = Path::new(FAULT_FILE);
    if std::fs::remove_file(file).is_ok() {
        if let Some(dir) = file.parent().and_then(|d| std::fs::File::open(d).ok()) {
            let _ = dir.sync_all();
        }
    }
    eprintln!("berth: fault point {n} reached: {what}; stopped");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(parse("list\n"), Some(Spec::List));
        assert_eq!(parse(" 3 "), Some(Spec::StopAt(3)));
        assert_eq!(parse("0"), None);
        assert_eq!(parse("x"), None);
    }
}
