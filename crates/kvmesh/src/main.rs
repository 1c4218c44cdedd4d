//! The kvmesh command line.
//!
//! One subcommand today, `calc` (KV-cache capacity planning, [`calc`]). Arguments are parsed
//! here and validated by each subcommand's module; `anyhow` is used in this binary only.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod calc;

/// kvmesh: a KV-cache system for LLM serving
#[derive(Debug, Parser)]
#[command(name = "kvmesh", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Calc(calc::CalcArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Calc(args) => calc::run(args),
    };
    let text = match result {
        Ok(text) => text,
        Err(e) => {
            eprintln!("kvmesh: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`kvmesh calc ... | head`) is not an error worth reporting.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvmesh: error: cannot write output: {e}");
            ExitCode::FAILURE
        }
    }
}
