//! Fault injection, a testing aid: the kernel command line's
//! `berth.fault=` ([`crate::cmdline::Fault`]) makes PID 1 go wrong on
//! purpose, so a test can show what gets a broken host back (the
//! watchdog). Inert unless that argument is given; no manifest key turns
//! it on, only a kernel command line (a test manifest's `[kernel]
//! cmdline`).

use std::time::Duration;

/// PID 1 stops for good at `point`: it says so, lets the console take
/// the line, then sleeps forever without reaping, answering the control
/// socket or petting the watchdog.
pub fn hang(point: &str) -> ! {
    crate::say!("fault injection (berth.fault=pid1-hang): PID 1 stops here, {point}");
    crate::console::drain();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
