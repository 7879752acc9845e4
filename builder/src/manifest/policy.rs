//! The `[update]` policy keys (`strategy`, `interval`, `wariness`,
//! `fleet-lock-url`, `fleet-lock-group`, `[[update.window]]`): when a host
//! takes new versions by itself. They become the [`UpdatePolicy`] the
//! update agent follows on the host.

use std::ops::Range;

use berth_fleet::protocol::{DEFAULT_GROUP, normalize_base, valid_group};
use berth_hostapi::update::{
    DEFAULT_INTERVAL_MS, FleetLockPolicy, Strategy, UpdatePolicy, Weekday, Window,
};
use toml::Spanned;

use super::ManifestError;
use super::schema::{RawUpdate, RawWindow};
use super::units::parse_duration_ms;
use super::validate::Checker;

/// The shortest `interval`: a fleet checking more often only loads the
/// server, and a check is a summary fetch anyway.
const MIN_INTERVAL_MS: u64 = 10_000;
/// The longest window: a week (every moment of it open).
const MAX_WINDOW_MINUTES: u64 = 7 * 24 * 60;

/// The policy of `[update]` `u` (its URL and keys are checked elsewhere).
pub(super) fn check(c: &Checker, u: &RawUpdate) -> Result<UpdatePolicy, ManifestError> {
    let strategy = match &u.strategy {
        Some(s) => strategy(c, s)?,
        None => Strategy::Manual,
    };
    let interval_ms = match &u.interval {
        Some(i) => interval(c, i)?,
        None => DEFAULT_INTERVAL_MS,
    };
    let wariness = match &u.wariness {
        Some(w) => Some(wariness(c, w)?),
        None => None,
    };
    if strategy == Strategy::Periodic && u.windows.is_empty() {
        let span = u.strategy.as_ref().map_or(0..0, Spanned::span);
        return Err(c.err(
            "update.strategy",
            &span,
            "\"periodic\" reboots only inside a maintenance window: add at least one \
             [[update.window]] (days, start, length)",
        ));
    }
    let fleet_lock = fleet_lock(c, u, strategy)?;
    let mut windows = Vec::new();
    for (i, w) in u.windows.iter().enumerate() {
        if !matches!(strategy, Strategy::Periodic | Strategy::FleetLock) {
            return Err(c.err(
                &format!("update.window[{i}]"),
                &w.span(),
                format!(
                    "maintenance windows need strategy = \"periodic\" or \"fleet-lock\" \
                     (the strategy is \"{}\"): set one, or remove the window",
                    strategy.name()
                ),
            ));
        }
        windows.push(window(c, &format!("update.window[{i}]"), w.get_ref())?);
    }
    Ok(UpdatePolicy {
        strategy,
        interval_ms,
        windows,
        wariness,
        fleet_lock,
    })
}

/// `fleet-lock-url` and `fleet-lock-group`: required (the URL) and
/// allowed only with strategy `fleet-lock`.
fn fleet_lock(
    c: &Checker,
    u: &RawUpdate,
    strategy: Strategy,
) -> Result<Option<FleetLockPolicy>, ManifestError> {
    if strategy != Strategy::FleetLock {
        let given = [
            ("update.fleet-lock-url", &u.fleet_lock_url),
            ("update.fleet-lock-group", &u.fleet_lock_group),
        ];
        if let Some((key, s)) = given
            .into_iter()
            .find_map(|(k, s)| s.as_ref().map(|s| (k, s)))
        {
            return Err(c.err(
                key,
                &s.span(),
                format!(
                    "a FleetLock server is only asked with strategy = \"fleet-lock\" (the \
                     strategy is \"{}\"): set it, or remove the key",
                    strategy.name()
                ),
            ));
        }
        return Ok(None);
    }
    let Some(url) = &u.fleet_lock_url else {
        let span = u.strategy.as_ref().map_or(0..0, Spanned::span);
        return Err(c.err(
            "update.strategy",
            &span,
            "\"fleet-lock\" asks a FleetLock server for a reboot slot: add fleet-lock-url \
             (e.g. \"http://fleet.example:8090/\")",
        ));
    };
    let text = url.get_ref();
    let ok = ["http://", "https://"]
        .iter()
        .any(|scheme| text.len() > scheme.len() && text.starts_with(scheme));
    if !ok || text.contains(char::is_whitespace) {
        return Err(c.err(
            "update.fleet-lock-url",
            &url.span(),
            format!("\"{text}\" is not an http:// or https:// URL"),
        ));
    }
    let group = match &u.fleet_lock_group {
        Some(g) if !valid_group(g.get_ref()) => {
            return Err(c.err(
                "update.fleet-lock-group",
                &g.span(),
                format!(
                    "\"{}\" is not a FleetLock group: letters, digits, '.' and '-' only, \
                     at least one",
                    g.get_ref()
                ),
            ));
        }
        Some(g) => g.get_ref().clone(),
        None => DEFAULT_GROUP.to_string(),
    };
    Ok(Some(FleetLockPolicy {
        url: normalize_base(text),
        group,
    }))
}

fn strategy(c: &Checker, s: &Spanned<String>) -> Result<Strategy, ManifestError> {
    [
        Strategy::Manual,
        Strategy::Immediate,
        Strategy::Periodic,
        Strategy::FleetLock,
    ]
    .into_iter()
        .find(|k| k.name() == s.get_ref())
        .ok_or_else(|| {
            c.err(
                "update.strategy",
                &s.span(),
                format!(
                    "unknown strategy \"{}\" (expected \"manual\", \"immediate\", \"periodic\" or \"fleet-lock\")",
                    s.get_ref()
                ),
            )
        })
}

fn interval(c: &Checker, i: &Spanned<String>) -> Result<u64, ManifestError> {
    let ms = parse_duration_ms(i.get_ref()).map_err(|m| c.err("update.interval", &i.span(), m))?;
    if ms < MIN_INTERVAL_MS {
        return Err(c.err(
            "update.interval",
            &i.span(),
            format!("`{}` is too short: at least \"10s\"", i.get_ref()),
        ));
    }
    Ok(ms)
}

fn wariness(c: &Checker, w: &Spanned<f64>) -> Result<f64, ManifestError> {
    let v = *w.get_ref();
    if !(0.0..=1.0).contains(&v) {
        return Err(c.err(
            "update.wariness",
            &w.span(),
            format!("{v} is out of range: a number from 0 (takes a rollout first) to 1 (last)"),
        ));
    }
    Ok(v)
}

fn window(c: &Checker, key: &str, w: &RawWindow) -> Result<Window, ManifestError> {
    if w.days.get_ref().is_empty() {
        return Err(c.err(
            &format!("{key}.days"),
            &w.days.span(),
            "must name at least one day (e.g. [\"Sat\", \"Sun\"])",
        ));
    }
    let mut days = Vec::new();
    for (j, d) in w.days.get_ref().iter().enumerate() {
        let day = Weekday::parse(d.get_ref()).ok_or_else(|| {
            c.err(
                &format!("{key}.days[{j}]"),
                &d.span(),
                format!(
                    "\"{}\" is not a day of the week (\"Mon\" to \"Sun\", or the whole name)",
                    d.get_ref()
                ),
            )
        })?;
        if !days.contains(&day) {
            days.push(day);
        }
    }
    let start_minute =
        start(w.start.get_ref()).map_err(|m| c.err(&format!("{key}.start"), &w.start.span(), m))?;
    let length_minutes = length(w.length.get_ref())
        .map_err(|m| c.err(&format!("{key}.length"), &w.length.span(), m))?;
    Ok(Window {
        days,
        start_minute,
        length_minutes,
    })
}

/// `hh:mm`, 24-hour, in UTC: minutes after midnight.
fn start(text: &str) -> Result<u32, String> {
    let bad =
        || format!("`{text}` is not a time of day as \"hh:mm\" (24-hour, UTC, e.g. \"22:30\")");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let digits = |s: &str, len: Range<usize>| {
        len.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 1..3) || !digits(m, 2..3) {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// A window's length: whole minutes, from one minute to a week.
fn length(text: &str) -> Result<u32, String> {
    let ms = parse_duration_ms(text)?;
    if ms % 60_000 != 0 {
        return Err(format!("`{text}` is not a whole number of minutes"));
    }
    let minutes = ms / 60_000;
    if !(1..=MAX_WINDOW_MINUTES).contains(&minutes) {
        return Err(format!(
            "`{text}` is out of range: from \"1m\" to a week (\"168h\")"
        ));
    }
    // At most a week's minutes: fits.
    Ok(minutes as u32)
}
