//! berth-init: PID 1 of a Berth host (see the library docs), or the
//! supervisor alone with `berth-init supervise`.

use std::io::Write;

use berth_init::{cli, failure, supervise};

fn main() {
    if rustix::process::getpid().is_init() {
        berth_init::pid1_main();
    }
    failure::install_panic_hook(false);
    // args_os: std::env::args panics on arguments that are not UTF-8.
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // writeln! instead of println!, which panics when stdout is closed.
    let code = match cli::parse(&args) {
        Ok(cli::Cmd::Supervise(opts)) => supervise::run(&opts),
        Ok(cli::Cmd::Help) => {
            let _ = writeln!(std::io::stdout(), "{}", cli::USAGE);
            0
        }
        Ok(cli::Cmd::Version) => {
            let _ = writeln!(
                std::io::stdout(),
                "berth-init {}",
                env!("CARGO_PKG_VERSION")
            );
            0
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "berth-init: {e}\n\n{}", cli::USAGE);
            2
        }
    };
    std::process::exit(code);
}
