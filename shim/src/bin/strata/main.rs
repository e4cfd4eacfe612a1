//! `strata`: a runc-compatible command line for the strata engine.

mod cli;
mod demo;
mod image;
mod output;
mod progress;
mod shim;

use clap::Parser;

fn main() {
    // The shim daemon's helper (see `engine::shimv2::helper`): not a user command.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(engine::shimv2::helper::HELPER_ARG) {
        std::process::exit(engine::shimv2::helper::main(&args[2..]));
    }
    let cli = cli::Cli::parse();
    if let Err(e) = output::init_logging(&cli) {
        eprintln!("strata: {}", output::describe(&e));
        std::process::exit(1);
    }
    let logging_to_file = cli.log.is_some();
    match cli::dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            output::report_error(&e, logging_to_file);
            std::process::exit(1);
        }
    }
}
