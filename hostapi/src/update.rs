//! How a host updates itself: the `[update]` policy `berth build` writes
//! into the host configuration and the update agent (`berthctl agent`)
//! follows, the maintenance-window arithmetic of the `periodic` strategy,
//! and the staged-rollout document `berth rollout` publishes.
//!
//! Times are unix seconds, in UTC: windows have no time zone, so a
//! daylight-saving change never lengthens, shortens or skips one.

use serde::{Deserialize, Serialize};

/// How often the agent checks by default (Zincati's 5 minutes).
pub const DEFAULT_INTERVAL_MS: u64 = 5 * 60 * 1000;
/// The agent's service name (`berthctl services`, its log file).
pub const AGENT_SERVICE: &str = "update-agent";
/// A host's own wariness, written by provisioning or by hand: one number
/// in [0, 1]; it wins over the image's `[update] wariness`.
pub const WARINESS_PATH: &str = "/etc/berth/wariness";

const DAY: u64 = 24 * 60 * 60;
const WEEK: u64 = 7 * DAY;
/// The unix epoch fell on a Thursday: this many seconds into its week,
/// counted from Monday 00:00.
const EPOCH_INTO_WEEK: u64 = 3 * DAY;

/// The `[update]` policy of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdatePolicy {
    /// When a host takes new versions by itself.
    pub strategy: Strategy,
    /// Time between checks, before jitter.
    pub interval_ms: u64,
    /// Maintenance windows (`periodic`, or `fleet-lock`: a slot is asked
    /// for only inside one).
    pub windows: Vec<Window>,
    /// The image's rollout wariness, if set: 0 takes a staged release
    /// first (canary), 1 last. Unset: derived from the host's id.
    pub wariness: Option<f64>,
    /// The FleetLock server and group (`fleet-lock` only). Absent from
    /// configurations written before the strategy existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_lock: Option<FleetLockPolicy>,
}

/// Where a `fleet-lock` host asks for its reboot slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetLockPolicy {
    /// The server's base URL, with a trailing `/` (`v1/pre-reboot` and
    /// `v1/steady-state` are appended to it).
    pub url: String,
    /// The reboot group (`^[a-zA-Z0-9.-]+$`; `default` unless set).
    pub group: String,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        UpdatePolicy {
            strategy: Strategy::Manual,
            interval_ms: DEFAULT_INTERVAL_MS,
            windows: Vec::new(),
            wariness: None,
            fleet_lock: None,
        }
    }
}

/// When the agent reboots a host into a version it deployed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// No agent: an operator runs `berthctl upgrade`.
    #[default]
    Manual,
    /// As soon as the new version is deployed.
    Immediate,
    /// Only inside a maintenance window.
    Periodic,
    /// Once a FleetLock server grants a reboot slot (and inside a
    /// maintenance window, if any are set); the slot is given back once
    /// the new version is blessed.
    FleetLock,
}

impl Strategy {
    /// The manifest's word for it.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Manual => "manual",
            Strategy::Immediate => "immediate",
            Strategy::Periodic => "periodic",
            Strategy::FleetLock => "fleet-lock",
        }
    }
}

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    /// Every day, Monday first.
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// Reads an English day name, three letters or whole, in any case
    /// (`Sat`, `saturday`).
    pub fn parse(text: &str) -> Option<Weekday> {
        let lower = text.to_ascii_lowercase();
        let full = [
            "monday",
            "tuesday",
            "wednesday",
            "thursday",
            "friday",
            "saturday",
            "sunday",
        ];
        full.iter()
            .position(|f| lower == *f || (lower.len() == 3 && f.starts_with(lower.as_str())))
            .map(|i| Weekday::ALL[i])
    }

    /// Days since Monday.
    fn index(self) -> u64 {
        self as u64
    }
}

/// A weekly maintenance window: it opens at `start_minute` (after
/// midnight, UTC) on each of `days` and stays open `length_minutes`,
/// past midnight and into the next week if that long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// The days it opens on.
    pub days: Vec<Weekday>,
    /// When it opens, in minutes after 00:00 UTC (0..1440).
    pub start_minute: u32,
    /// How long it stays open, in minutes (at least 1).
    pub length_minutes: u32,
}

/// Whether windows are open at a moment, and until or from when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// Window `index` is open until `closes_at`.
    Open {
        /// Which window (the manifest's order).
        index: usize,
        /// When it closes.
        closes_at: u64,
    },
    /// All are closed; window `index` opens next, at `opens_at`.
    Closed {
        /// Which window.
        index: usize,
        /// When it opens.
        opens_at: u64,
    },
}

impl Window {
    /// The `hh:mm` it opens at.
    pub fn start_text(&self) -> String {
        format!(
            "{:02}:{:02}",
            self.start_minute / 60,
            self.start_minute % 60
        )
    }

    /// The window as the manifest would say it, e.g. `Sat,Sun 22:30 for 90m`.
    pub fn describe(&self) -> String {
        let days: Vec<String> = self.days.iter().map(|d| format!("{d:?}")).collect();
        format!(
            "{} {} for {}m",
            days.join(","),
            self.start_text(),
            self.length_minutes
        )
    }

    /// Each opening in the week, as seconds after Monday 00:00.
    fn starts(&self) -> impl Iterator<Item = u64> + '_ {
        self.days
            .iter()
            .map(|d| d.index() * DAY + u64::from(self.start_minute) * 60)
    }

    fn length(&self) -> u64 {
        u64::from(self.length_minutes) * 60
    }

    /// If open at `now`, when it closes (the latest close among the
    /// openings it is inside: a day's window may run into the next one's).
    fn open_until(&self, now: u64) -> Option<u64> {
        let into_week = (now + EPOCH_INTO_WEEK) % WEEK;
        let length = self.length();
        self.starts()
            .filter_map(|start| {
                let since = (into_week + WEEK - start) % WEEK;
                if length >= WEEK {
                    // Open all week: it closes one length after this start.
                    Some(now - since + length)
                } else {
                    (since < length).then(|| now + (length - since))
                }
            })
            .max()
    }

    /// The next opening after `now` (strictly later; at most a week away).
    fn next_opening(&self, now: u64) -> Option<u64> {
        let into_week = (now + EPOCH_INTO_WEEK) % WEEK;
        self.starts()
            .map(|start| {
                let until = (start + WEEK - into_week) % WEEK;
                now + if until == 0 { WEEK } else { until }
            })
            .min()
    }
}

/// Whether any of `windows` is open at `now`, and until when; else which
/// opens next. `None` when there are no windows (or none has a day).
pub fn window_state(windows: &[Window], now: u64) -> Option<WindowState> {
    let open = windows
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.open_until(now).map(|c| (i, c)))
        .max_by_key(|&(i, c)| (c, std::cmp::Reverse(i)));
    if let Some((index, closes_at)) = open {
        return Some(WindowState::Open { index, closes_at });
    }
    windows
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.next_opening(now).map(|o| (i, o)))
        .min_by_key(|&(i, o)| (o, i))
        .map(|(index, opens_at)| WindowState::Closed { index, opens_at })
}

/// A staged rollout of one commit of one ref, as `berth rollout` writes it
/// (signed) into the repository's summary: hosts take the commit once
/// [`Rollout::progress`] reaches their wariness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// The ref (so a document cannot be moved to another one).
    #[serde(rename = "ref")]
    pub ostree_ref: String,
    /// The commit being rolled out.
    pub commit: String,
    /// When the rollout started (or starts).
    pub start: u64,
    /// How long from `start_fraction` to every host, in seconds.
    pub duration_secs: u64,
    /// The fraction of hosts that may take it at `start`.
    pub start_fraction: f64,
    /// Set while paused: when it was paused. Hosts that have not taken
    /// the commit yet wait.
    #[serde(default)]
    pub paused_at: Option<u64>,
    /// Every host may take it now.
    #[serde(default)]
    pub complete: bool,
}

impl Rollout {
    /// How far the rollout is at `now`: `start_fraction + (1 −
    /// start_fraction) · (now − start) / duration`, clamped to [0, 1]; 1
    /// once complete. A paused rollout stays where it was paused.
    pub fn progress(&self, now: u64) -> f64 {
        if self.complete {
            return 1.0;
        }
        let at = self.paused_at.map_or(now, |p| p.min(now));
        let start_fraction = self.start_fraction.clamp(0.0, 1.0);
        if self.duration_secs == 0 {
            return if at >= self.start {
                1.0
            } else {
                start_fraction
            };
        }
        let elapsed = at as f64 - self.start as f64;
        let p = start_fraction + (1.0 - start_fraction) * elapsed / self.duration_secs as f64;
        p.clamp(0.0, 1.0)
    }

    /// Whether a host of `wariness` may take the commit at `now`.
    pub fn admits(&self, wariness: f64, now: u64) -> bool {
        self.complete || (self.paused_at.is_none() && self.progress(now) >= wariness)
    }

    /// The document's bytes as signed and published.
    pub fn to_json(&self) -> String {
        // Plain data: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2026-11-30 00:00 UTC.
    const MONDAY: u64 = 1_795_996_800;

    fn at(day: u64, h: u64, m: u64) -> u64 {
        MONDAY + day * DAY + h * 3600 + m * 60
    }

    fn window(days: &[Weekday], start: &str, minutes: u32) -> Window {
        let (h, m) = start.split_once(':').unwrap();
        Window {
            days: days.to_vec(),
            start_minute: h.parse::<u32>().unwrap() * 60 + m.parse::<u32>().unwrap(),
            length_minutes: minutes,
        }
    }

    #[test]
    fn a_fleet_lock_policy_round_trips_and_old_policies_still_parse() {
        let old: UpdatePolicy = serde_json::from_str(
            r#"{"strategy":"periodic","interval_ms":60000,"windows":[],"wariness":null}"#,
        )
        .unwrap();
        assert_eq!(old.fleet_lock, None);
        // Without fleet-lock, nothing new is written either.
        assert!(!serde_json::to_string(&old).unwrap().contains("fleet_lock"));
        let p = UpdatePolicy {
            strategy: Strategy::FleetLock,
            fleet_lock: Some(FleetLockPolicy {
                url: "http://10.0.2.2:8090/".into(),
                group: "workers".into(),
            }),
            ..UpdatePolicy::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(r#""strategy":"fleet-lock""#), "{json}");
        assert_eq!(serde_json::from_str::<UpdatePolicy>(&json).unwrap(), p);
        assert_eq!(Strategy::FleetLock.name(), "fleet-lock");
    }

    #[test]
    fn the_reference_monday_is_a_monday() {
        // 1970-01-01 was a Thursday; 2026-11-30 is a Monday.
        assert_eq!((MONDAY + EPOCH_INTO_WEEK) % WEEK, 0);
        assert_eq!(MONDAY % DAY, 0);
    }

    #[test]
    fn day_names() {
        assert_eq!(Weekday::parse("Sat"), Some(Weekday::Sat));
        assert_eq!(Weekday::parse("sunday"), Some(Weekday::Sun));
        assert_eq!(Weekday::parse("MON"), Some(Weekday::Mon));
        assert_eq!(Weekday::parse("Sa"), None);
        assert_eq!(Weekday::parse("Satur"), None);
        assert_eq!(Weekday::parse("Sonntag"), None);
    }

    #[test]
    fn a_window_is_open_from_its_start_for_its_length() {
        let w = [window(&[Weekday::Sat, Weekday::Sun], "22:30", 90)];
        assert_eq!(
            window_state(&w, at(5, 22, 29)),
            Some(WindowState::Closed {
                index: 0,
                opens_at: at(5, 22, 30)
            })
        );
        assert_eq!(
            window_state(&w, at(5, 22, 30)),
            Some(WindowState::Open {
                index: 0,
                closes_at: at(6, 0, 0)
            })
        );
        assert!(matches!(
            window_state(&w, at(5, 23, 59)),
            Some(WindowState::Open { .. })
        ));
        // Closed again from the end, until Sunday's opening.
        assert_eq!(
            window_state(&w, at(6, 0, 0)),
            Some(WindowState::Closed {
                index: 0,
                opens_at: at(6, 22, 30)
            })
        );
    }

    #[test]
    fn windows_wrap_past_midnight_and_past_the_end_of_the_week() {
        // Sunday 23:00 for three hours: into Monday, the next week.
        let w = [window(&[Weekday::Sun], "23:00", 180)];
        assert!(matches!(
            window_state(&w, at(6, 23, 30)),
            Some(WindowState::Open { closes_at, .. }) if closes_at == at(7, 2, 0)
        ));
        // Monday 01:59 of that next week is still inside; 02:00 is not.
        assert!(matches!(
            window_state(&w, at(7, 1, 59)),
            Some(WindowState::Open { .. })
        ));
        assert_eq!(
            window_state(&w, at(0, 1, 0)),
            Some(WindowState::Open {
                index: 0,
                closes_at: at(0, 2, 0)
            })
        );
        assert_eq!(
            window_state(&w, at(7, 2, 0)),
            Some(WindowState::Closed {
                index: 0,
                opens_at: at(13, 23, 0)
            })
        );
    }

    #[test]
    fn overlapping_windows_merge_and_the_soonest_opening_wins() {
        let w = [
            window(&[Weekday::Tue], "10:00", 60),
            window(&[Weekday::Tue], "10:30", 60),
            window(&[Weekday::Mon, Weekday::Wed], "03:00", 30),
        ];
        // Inside both: open until the later close.
        assert_eq!(
            window_state(&w, at(1, 10, 45)),
            Some(WindowState::Open {
                index: 1,
                closes_at: at(1, 11, 30)
            })
        );
        // Between the two Tuesday ones there is no gap.
        assert!(matches!(
            window_state(&w, at(1, 11, 15)),
            Some(WindowState::Open { index: 1, .. })
        ));
        // Monday noon: Tuesday 10:00 is next.
        assert_eq!(
            window_state(&w, at(0, 12, 0)),
            Some(WindowState::Closed {
                index: 0,
                opens_at: at(1, 10, 0)
            })
        );
        // Tuesday noon: Wednesday 03:00.
        assert_eq!(
            window_state(&w, at(1, 12, 0)),
            Some(WindowState::Closed {
                index: 2,
                opens_at: at(2, 3, 0)
            })
        );
        // Wednesday 04:00: a week's wrap to Monday 03:00.
        assert_eq!(
            window_state(&w, at(2, 4, 0)),
            Some(WindowState::Closed {
                index: 2,
                opens_at: at(7, 3, 0)
            })
        );
    }

    #[test]
    fn a_window_as_long_as_a_week_is_always_open() {
        let w = [window(&[Weekday::Thu], "00:00", 7 * 24 * 60)];
        for t in [at(0, 0, 0), at(3, 0, 0), at(6, 23, 59)] {
            assert!(
                matches!(window_state(&w, t), Some(WindowState::Open { .. })),
                "{t}"
            );
        }
        assert_eq!(window_state(&[], at(0, 0, 0)), None);
        assert_eq!(
            window(&[Weekday::Sat, Weekday::Sun], "22:30", 90).describe(),
            "Sat,Sun 22:30 for 90m"
        );
    }

    fn rollout(start_fraction: f64) -> Rollout {
        Rollout {
            ostree_ref: "berth/x/x86_64".into(),
            commit: "c".into(),
            start: 1000,
            duration_secs: 100,
            start_fraction,
            paused_at: None,
            complete: false,
        }
    }

    #[test]
    fn rollout_progress_runs_from_the_start_fraction_to_one_and_is_clamped() {
        let r = rollout(0.2);
        assert_eq!(r.progress(1000), 0.2);
        assert!((r.progress(1050) - 0.6).abs() < 1e-9);
        assert_eq!(r.progress(1100), 1.0);
        assert_eq!(r.progress(5000), 1.0);
        // Before its start the formula goes below the start fraction, and
        // is clamped at 0.
        assert!((r.progress(990) - 0.12).abs() < 1e-9);
        assert_eq!(r.progress(0), 0.0);
        assert!(r.admits(0.6, 1050) && !r.admits(0.61, 1050));
        assert!(r.admits(0.0, 0), "a canary takes it at once");
        // Out-of-range fractions are clamped too.
        assert_eq!(rollout(7.0).progress(1000), 1.0);
        assert_eq!(rollout(-1.0).progress(1000), 0.0);
        // No duration: everyone from the start.
        let now = Rollout {
            duration_secs: 0,
            ..rollout(0.1)
        };
        assert_eq!(now.progress(999), 0.1);
        assert_eq!(now.progress(1000), 1.0);
    }

    #[test]
    fn a_paused_rollout_holds_everyone_and_a_complete_one_admits_everyone() {
        let paused = Rollout {
            paused_at: Some(1050),
            ..rollout(0.2)
        };
        assert!((paused.progress(9999) - 0.6).abs() < 1e-9);
        assert!(!paused.admits(0.1, 9999));
        let complete = Rollout {
            complete: true,
            ..paused
        };
        assert_eq!(complete.progress(0), 1.0);
        assert!(complete.admits(1.0, 0));
    }

    #[test]
    fn documents_round_trip_and_refuse_unknown_fields() {
        let r = rollout(0.5);
        let back: Rollout = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r);
        assert!(r.to_json().contains("\"ref\":\"berth/x/x86_64\""));
        assert!(serde_json::from_str::<Rollout>(r#"{"ref":"r","commit":"c","start":1,"duration_secs":1,"start_fraction":0,"everyone":true}"#).is_err());
    }

    #[test]
    fn the_default_policy_is_manual_every_five_minutes() {
        let p: UpdatePolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, UpdatePolicy::default());
        assert_eq!(p.strategy, Strategy::Manual);
        assert_eq!(p.interval_ms, 300_000);
    }
}
