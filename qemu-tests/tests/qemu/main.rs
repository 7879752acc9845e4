//! The QEMU tests, one module per area, in one test binary: each test
//! binary links every dependency again (thin LTO), and as eleven binaries
//! they took about nine CPU-minutes of the suite's build (575 s measured
//! with cargo's timings, on two cores).

mod agent;
mod boot;
mod containers;
mod fleet;
mod harness;
mod image;
mod init;
mod power_cuts;
mod provision;
mod secure_boot;
mod upgrade;
