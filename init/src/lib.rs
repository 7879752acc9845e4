//! berth-init: PID 1 of a Berth host.
//!
//! - Stage 1 (in the initramfs, where /etc/initrd-release exists): mount
//!   the API file systems, load the initramfs's modules, find the root
//!   partition by PARTUUID, mount it, set up the OSTree deployment as
//!   ostree-prepare-root does, switch root and exec stage 2.
//! - Stage 2 (PID 1 in the deployment): the remaining mounts, modules,
//!   network, then the supervisor, which runs the host's services, reaps
//!   every process, prints the ready line, blesses a boot on trial and shuts
//!   down on a signal or a control-socket request.
//! - `berth-init supervise`: the supervisor alone as an ordinary process
//!   (tests, development).
//!
//! It never panics on purpose and never exits as PID 1. It is not a general
//! init system: no runlevels, no inittab, no udev, no logins.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod bless;
pub mod blockdev;
pub mod cli;
pub mod clock;
pub mod cmdline;
pub mod coldplug;
pub mod console;
pub mod control;
pub mod envfile;
pub mod failure;
pub mod fault;
pub mod ffi;
pub mod gpt;
pub mod growroot;
pub mod modules;
pub mod mounts;
pub mod network;
pub mod oneshot;
pub mod powerbutton;
pub mod prepare_root;
pub mod reaper;
pub mod shutdown;
pub mod signals;
pub mod stage1;
pub mod stage2;
pub mod supervise;
pub mod supervisor;
pub mod switch_root;
pub mod sys;
pub mod sysctl;
pub mod users;
pub mod watchdog;

use std::path::Path;

/// The systemd convention for "this is an initramfs"; the builder creates
/// it in Berth's initramfs.
pub const INITRD_RELEASE: &str = "/etc/initrd-release";

/// PID 1: stage 1 or stage 2 by [`INITRD_RELEASE`]. Never returns.
pub fn pid1_main() -> ! {
    let sys = sys::RealSys;
    failure::install_panic_hook(true);
    console::attach_console();
    if Path::new(INITRD_RELEASE).exists() {
        let mut ctx = stage1::Context::default();
        let err = stage1::run(&sys, &mut ctx);
        failure::fail(&sys, &console::chain(&err), ctx.debug)
    } else {
        stage2::run(&sys)
    }
}
