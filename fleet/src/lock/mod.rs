//! Berth's FleetLock server: reboot slots per group, kept only in etcd.
//!
//! Each group is a counting semaphore in one etcd key, changed only by
//! compare-and-swap ([`store`]); what a lock or an unlock does to it is a
//! pure function ([`semaphore`]); the configuration says which groups
//! exist and how many slots each has ([`config`]), and those slots are
//! written into the key at every change (so a changed configuration is
//! never shadowed by an old key, unlike airlock#81). [`service`] checks
//! requests and counts outcomes; [`server`] speaks HTTP.
//!
//! Holding no state of its own, the server can run as several replicas on
//! one etcd cluster and be restarted at any time. It does not authenticate
//! clients (FleetLock has no authentication): put it behind TLS or a proxy.
//!
//! The operator's view and release, for `berth fleet locks` and
//! `berth fleet unlock GROUP ID`, are [`Store::groups`] and
//! [`Store::release`].

pub mod config;
pub mod semaphore;
pub mod server;
pub mod service;
pub mod store;

pub use config::{Config, ConfigError, GroupConfig};
pub use semaphore::{Holder, Semaphore};
pub use server::Server;
pub use service::{ApiError, Service};
pub use store::{GroupState, LockError, Locked, Store, Unlocked, group_key};

/// Connects to the configured etcd and starts serving.
pub fn serve(config: Config) -> Result<Server, StartError> {
    let client = crate::etcd::Client::new(&config.etcd)?;
    Ok(Server::start(Service::new(config, Store::new(client)))?)
}

/// Why [`serve`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The etcd settings are unusable (unreadable CA file…).
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
    /// The address cannot be listened on.
    #[error(transparent)]
    Listen(#[from] server::ServeError),
}
