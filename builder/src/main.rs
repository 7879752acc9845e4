//! `berth`: the command line on the build machine. Parses arguments, calls
//! the library, prints the error chain once and exits 0 (success),
//! 1 (failure) or 2 (usage or input error).

use std::process::ExitCode;

use berth_hostapi::error_chain::one_line;
use clap::Parser;

fn main() -> ExitCode {
    let cli = berth::cli::Cli::parse();
    match berth::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("berth: error: {}", one_line(err.as_ref()));
            berth::error::exit_code(&err)
        }
    }
}
