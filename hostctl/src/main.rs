//! `berthctl`: the agent on a Berth host. Talks to berth-init over its
//! control socket (services, logs, restart, reboot) and to libostree
//! (status, upgrade, rollback). Exits 0 on success, 1 on failure, 2 on a
//! usage error.

use std::process::ExitCode;

use clap::Parser;

mod bootcheck;
mod cli;
mod control;
mod host;
mod provision;
mod rollback;
mod status;
mod upgrade;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
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
