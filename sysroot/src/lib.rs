//! The on-disk model of an installed Berth host, shared by `berth` (the
//! first install into an image) and `berthctl` (upgrades on the host).
//!
//! libostree owns the deployments (checkout, `/etc` merge, origin files,
//! order, cleanup); this crate adds what libostree 2022.7 cannot do for a
//! FAT ESP and systemd-boot: the ESP plan (kernels, initramfs images, Boot
//! Loader Specification entries naming deployments by their stable paths)
//! and boot counting. The contract between an image and its boot loader
//! (kernel arguments, deploying, the ESP as files) is [`contract`], used by
//! both sides.
//!
//! It does not write disk images (the builder does) and does not talk to
//! berth-init.

pub mod bls;
pub mod contract;
pub mod deployment;
pub mod efivars;
pub mod esp_check;
pub mod esp_state;
pub mod esp_sync;
pub mod fault;
pub mod install;
pub mod remote;
pub mod rollout;

pub use deployment::{DeploymentInfo, STATEROOT};

/// Why an operation on a sysroot failed.
#[derive(Debug, thiserror::Error)]
pub enum SysrootError {
    /// A libostree call failed.
    #[error("{what}")]
    Ostree {
        /// What was being done.
        what: String,
        /// libostree's error.
        #[source]
        source: ostree::glib::Error,
    },
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The sysroot does not look as Berth lays it out.
    #[error("{0}")]
    Layout(String),
}

impl SysrootError {
    /// Wraps a libostree error with what was being done.
    pub fn ostree(what: impl Into<String>, source: ostree::glib::Error) -> Self {
        SysrootError::Ostree {
            what: what.into(),
            source,
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        SysrootError::Io {
            what: what.into(),
            source,
        }
    }
}
