//! The contract between a Berth image and the programs on its host.
//!
//! - [`config`]: the host configuration `berth build` compiles from a
//!   manifest and `berth-init` reads at boot.
//! - [`control`]: the protocol on berth-init's control socket, spoken by
//!   `berthctl`.
//! - [`fleet`]: where the fleet's etcd is (`[fleet]`).
//! - [`machine_id`]: the host's identity and the ids derived from it.
//! - [`update`]: how a host updates itself (strategy, windows, rollouts).
//! - [`provisioning`]: where per-host data is found (fw_cfg, `cidata`
//!   volumes), for berth-init and `berthctl provision`.
//! - [`READY_PREFIX`] and [`ready_line`]: the one line stage 2 prints when the
//!   host is up, which tests and `berth run` wait for.
//!
//! It holds data and its encoding only: no I/O beyond reading files.

pub mod config;
pub mod control;
pub mod error_chain;
pub mod fleet;
pub mod machine_id;
pub mod provisioning;
pub mod services;
pub mod update;

/// The start of the line stage 2 prints on the console once every required
/// service is ready. Stable: tests and tools match on it.
pub const READY_PREFIX: &str = "berth-init: ready";

/// The public key (ASCII armor) update commits must be signed with, when
/// the manifest names one; the host's OSTree remote points at it.
pub const UPDATE_KEY_PATH: &str = "/usr/lib/berth/update-key.asc";

/// Where the OS tree keeps Berth's own files (init, host config, containers).
pub const BERTH_LIB_DIR: &str = "/usr/lib/berth";

/// The ready line, e.g.
/// `berth-init: ready image=minimal version=1.0.0 services=2 boot=3.41s`.
///
/// `boot_secs` is the time since the kernel started (CLOCK_BOOTTIME).
pub fn ready_line(image: &str, version: &str, services: usize, boot_secs: f64) -> String {
    format!(
        "{READY_PREFIX} image={image} version={version} services={services} boot={boot_secs:.2}s"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_starts_with_the_prefix() {
        let line = ready_line("minimal", "1.0.0", 2, 3.414);
        assert_eq!(
            line,
            "berth-init: ready image=minimal version=1.0.0 services=2 boot=3.41s"
        );
        assert!(line.starts_with(READY_PREFIX));
    }
}
