//! `berthctl`: the agent on a Berth host. Parses arguments, calls the
//! `berthctl` library, prints the error chain once and exits 0 on success,
//! 1 on failure, 2 on a usage error.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = berthctl::cli::Cli::parse();
    match berthctl::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            let mut msg = String::new();
            for cause in err.chain() {
                let text = cause.to_string();
                if msg.contains(&text) {
                    continue;
                }
                if !msg.is_empty() {
                    msg.push_str(": ");
                }
                msg.push_str(&text);
            }
            eprintln!("berthctl: error: {msg}");
            ExitCode::from(1)
        }
    }
}
