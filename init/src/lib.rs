//! berth-init: PID 1 of a Berth host.
//!
//! - Stage 1 (in the initramfs, where /etc/initrd-release exists): mount
//!   the API file systems, load the initramfs's modules, find the root
//!   partition (by PARTUUID, or on the disk of the ESP the boot loader
//!   booted from), mount it, set up the OSTree deployment (named by
//!   `ostree=` or by its tree id) as ostree-prepare-root does, switch root
//!   and exec stage 2.
//! - Stage 2 (PID 1 in the deployment): the remaining mounts, modules,
//!   network, then the supervisor, which runs the host's services, reaps
//!   every process, prints the ready line, blesses a boot on trial and shuts
//!   down on a signal or a control-socket request.
//! - `berth-init supervise`: the supervisor alone as an ordinary process
//!   (tests, development).
//!
//! It never panics on purpose and never exits as PID 1. It is not a general
//! init system: no runlevels, no inittab, no udev, no logins.
//!
//! The source has a directory per room: `stage1/` (runs only in the
//! initramfs), `stage2/` (only in the booted host), `supervisor/` (the
//! services, under stage 2 or `berth-init supervise`) and `sys/` (the
//! system layer under all of them). The modules at the top are shared by
//! both stages: the console, the kernel command line, mounts, block
//! devices and GPT, EFI variables, kernel modules, the watchdog, shutdown
//! and boot failure. Only what the binary calls is public: [`pid1_main`], [`cli`],
//! [`supervise`] and [`failure::install_panic_hook`].

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

mod stage1;
mod stage2;
mod supervisor;
mod sys;

// Shared by both stages (failure is public for its panic hook).
mod blockdev;
mod cmdline;
mod console;
mod efivars;
pub mod failure;
mod gpt;
mod modules;
mod mounts;
mod shutdown;
mod watchdog;

// The binary's command line and `supervise` command.
pub mod cli;
pub use supervisor::supervise;

use std::path::Path;

/// The systemd convention for "this is an initramfs"; the builder creates
/// it in Berth's initramfs.
const INITRD_RELEASE: &str = "/etc/initrd-release";

/// PID 1: stage 1 or stage 2 by `INITRD_RELEASE`. Never returns.
pub fn pid1_main() -> ! {
    let sys = sys::RealSys;
    failure::install_panic_hook(true);
    console::attach_console();
    if Path::new(INITRD_RELEASE).exists() {
        let mut ctx = stage1::Context::default();
        let err = stage1::run(&sys, &mut ctx);
        failure::fail(&sys, &berth_hostapi::error_chain::one_line(&err), ctx.debug)
    } else {
        stage2::run(&sys)
    }
}
