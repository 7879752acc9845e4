//! Progress of a build: a spinner per stage on a terminal (indicatif),
//! plain lines when stderr is not a terminal, and the time each stage
//! took for the summary.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// The stages of `berth build`, in order.
pub const STAGES: [&str; 8] = [
    "resolve",
    "fetch",
    "assemble",
    "initramfs",
    "commit",
    "deploy",
    "disk",
    "publish",
];

/// A stage only some builds have (`[secure-boot]`), after `initramfs`.
pub const UKI_STAGE: &str = "uki";

/// Reports stages as they run and remembers their durations.
pub struct Progress {
    fancy: bool,
    /// This build's stages: [`STAGES`], plus optional ones it runs.
    stages: Vec<&'static str>,
    current: Option<(usize, Instant, Option<ProgressBar>)>,
    /// Finished stages and how long each took.
    pub timings: Vec<(&'static str, Duration)>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    /// Spinners when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Progress {
        Progress {
            fancy: std::io::stderr().is_terminal(),
            stages: STAGES.to_vec(),
            current: None,
            timings: Vec::new(),
        }
    }

    /// Counts [`UKI_STAGE`] among this build's stages (call before it
    /// starts; idempotent).
    pub fn add_uki_stage(&mut self) {
        if !self.stages.contains(&UKI_STAGE) {
            let at = self
                .stages
                .iter()
                .position(|s| *s == "initramfs")
                .map_or(self.stages.len(), |i| i + 1);
            self.stages.insert(at, UKI_STAGE);
        }
    }

    /// Starts stage `name` (one of this build's stages) with a short description.
    pub fn stage(&mut self, name: &'static str, what: &str) {
        self.finish();
        let n = self.stages.iter().position(|s| *s == name).unwrap_or(0);
        let label = format!("[{}/{}] {name:<9} {what}", n + 1, self.stages.len());
        let bar = if self.fancy {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(label);
            bar.enable_steady_tick(Duration::from_millis(120));
            Some(bar)
        } else {
            eprintln!("berth: {label}");
            None
        };
        self.current = Some((n, Instant::now(), bar));
    }

    /// Updates the current stage's description.
    pub fn note(&self, what: &str) {
        match &self.current {
            Some((n, _, Some(bar))) => {
                bar.set_message(format!(
                    "[{}/{}] {:<9} {what}",
                    n + 1,
                    self.stages.len(),
                    self.stages[*n]
                ));
            }
            Some((_, _, None)) => eprintln!("berth:           {what}"),
            None => {}
        }
    }

    /// Ends the current stage, if any, recording its time.
    pub fn finish(&mut self) {
        if let Some((n, start, bar)) = self.current.take() {
            let took = start.elapsed();
            let line = format!(
                "[{}/{}] {:<9} done in {:.1}s",
                n + 1,
                self.stages.len(),
                self.stages[n],
                took.as_secs_f64()
            );
            match bar {
                Some(bar) => bar.finish_with_message(line),
                None => eprintln!("berth: {line}"),
            }
            self.timings.push((self.stages[n], took));
        }
    }

    /// Ends the current stage without recording it (on failure).
    pub fn abandon(&mut self) {
        if let Some((_, _, Some(bar))) = self.current.take() {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uki_stage_counts_only_when_added_and_follows_the_initramfs() {
        let mut p = Progress::new();
        assert_eq!(p.stages, STAGES);
        p.add_uki_stage();
        p.add_uki_stage();
        assert_eq!(p.stages.len(), STAGES.len() + 1);
        assert_eq!(&p.stages[3..6], ["initramfs", "uki", "commit"]);
    }
}
