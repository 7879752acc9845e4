//! berth-init: PID 1 of a Berth host (see the library docs), or the
//! supervisor alone with `berth-init supervise`.

use berth_init::{cli, failure, supervise};

fn main() {
    if rustix::process::getpid().is_init() {
        berth_init::pid1_main();
    }
    failure::install_panic_hook(false);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match cli::parse(&args) {
        Ok(cli::Cmd::Supervise(opts)) => supervise::run(&opts),
        Ok(cli::Cmd::Help) => {
            println!("{}", cli::USAGE);
            0
        }
        Ok(cli::Cmd::Version) => {
            println!("berth-init {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Err(e) => {
            eprintln!("berth-init: {e}\n\n{}", cli::USAGE);
            2
        }
    };
    std::process::exit(code);
}
