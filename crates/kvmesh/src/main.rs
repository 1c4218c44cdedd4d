//! The kvmesh command line.
//!
//! Subcommands: `serve` (the OpenAI-compatible server, [`serve`]), `bench` (the load
//! generator for any OpenAI endpoint, [`loadgen`], and the engine's measurements,
//! [`bench`]), `generate` (one prompt through the CPU engine, [`generate`]), `model` (the
//! verified model store, [`model_cmd`]), `sim` (fleet simulation, [`sim`]) and `calc`
//! (KV-cache capacity planning, [`calc`]).
//! Arguments are parsed here and validated by each subcommand's module; `anyhow` is used in
//! this binary only.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod calc;
mod engine_args;
mod generate;
mod loadgen;
mod model_cmd;
mod number_format;
#[cfg(feature = "plot")]
mod png_canvas;
mod progress;
mod serve;
mod sim;

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
    Sim(sim::SimArgs),
    Serve(serve::ServeArgs),
    Model(model_cmd::ModelArgs),
    Generate(generate::GenerateArgs),
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Calc(args) => calc::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Model(args) => model_cmd::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
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
