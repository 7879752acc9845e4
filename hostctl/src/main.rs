//! `berthctl`: the agent on a Berth host. Parses arguments, calls the
//! `berthctl` library, prints the error chain once and exits 0 on success,
//! 1 on failure, 2 on a usage error.

use std::process::ExitCode;

use berth_hostapi::error_chain::one_line;
use clap::Parser;

fn main() -> ExitCode {
    let cli = berthctl::cli::Cli::parse();
    match berthctl::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("berthctl: error: {}", one_line(err.as_ref()));
            ExitCode::from(1)
        }
    }
}
