//! Logging (`--log`, `--log-format`, `--debug`) and error reporting.

use crate::cli::Cli;
use anyhow::{Context, Result};
use std::sync::Mutex;

/// Sets up tracing as runc does: to `--log` (or stderr), text or JSON.
pub fn init_logging(cli: &Cli) -> Result<()> {
    let level = if cli.debug { tracing::Level::DEBUG } else { tracing::Level::WARN };
    let builder = tracing_subscriber::fmt().with_max_level(level).with_target(false);
    let json = cli.log_format == "json";
    match &cli.log {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log file {}", path.display()))?;
            let b = builder.with_ansi(false).with_writer(Mutex::new(file));
            if json { b.json().init() } else { b.init() }
        }
        None => {
            let b = builder.with_writer(std::io::stderr);
            if json { b.json().init() } else { b.init() }
        }
    }
    Ok(())
}

/// Prints one line for an error on stderr; with `--log` the log file gets it too.
pub fn report_error(e: &anyhow::Error, logging_to_file: bool) {
    let text = describe(e);
    if logging_to_file {
        tracing::error!("{text}");
    }
    eprintln!("strata: {text}");
}

/// The error and its causes on one line, each cause once: a message that already ends with its
/// cause (the libraries' errors name the file and then the kernel's reason) is not followed by
/// it a second time.
pub fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
