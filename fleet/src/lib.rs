//! Fleet coordination for Berth hosts, on etcd v3 and nothing of Berth's
//! own: reboot slots through the FleetLock protocol (Fedora CoreOS's, so
//! Zincati and airlock interoperate), a lock server whose only state is one
//! etcd key per group changed by compare-and-swap, and a registry of hosts
//! and announced services under etcd leases, so what dies drops out.

pub mod etcd;
pub mod lock;
pub mod protocol;
pub mod registry;
pub mod view;
