//! The `berth` library: everything the `berth` command does, callable from
//! tests. `berth build` turns a manifest into an OSTree commit and a
//! UEFI-bootable GPT disk image; `berth run` boots an image under QEMU.
//!
//! It does not run on the host: the host side is `berth-init` and
//! `berthctl`, and the on-disk model they share with the builder is the
//! `berth-sysroot` crate.

pub mod binaries;
pub mod build;
pub mod cli;
pub mod command;
pub mod commit;
pub mod container;
pub mod disk;
pub mod error;
pub mod fleet;
pub mod fleet_lock_server;
pub mod host_config;
pub mod ids;
pub mod initramfs;
pub mod keys;
pub mod manifest;
pub mod packages;
pub mod progress;
pub mod rollout;
pub mod rootfs;
pub mod run;
pub mod serve;
pub mod signing;
pub mod summary;
pub mod uki;
