//! The `kto` command line.
//!
//! The only crate that picks devices and does I/O for training; the logic lives in the libraries.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// KTO preference training for Llama and Qwen2 models, TRL-compatible.
#[derive(Debug, Parser)]
#[command(name = "kto", version, about, long_about = None, allow_negative_numbers = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the recommended desirable/undesirable weight ranges (KTO paper eq. 8, TRL's rule)
    /// for a dataset's label counts.
    Weights(WeightsArgs),
}

#[derive(Debug, clap::Args)]
struct WeightsArgs {
    /// Number of desirable (thumbs-up) examples.
    #[arg(long)]
    desirable: usize,
    /// Number of undesirable (thumbs-down) examples.
    #[arg(long)]
    undesirable: usize,
    /// The configured desirable weight (TRL's `desirable_weight`).
    #[arg(long, default_value_t = 1.0)]
    desirable_weight: f64,
    /// The configured undesirable weight (TRL's `undesirable_weight`).
    #[arg(long, default_value_t = 1.0)]
    undesirable_weight: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Weights(args) => weights(&args),
    }
}

fn weights(args: &WeightsArgs) -> anyhow::Result<()> {
    let loss = kto_core::KtoLossConfig::new()
        .with_desirable_weight(args.desirable_weight)
        .with_undesirable_weight(args.undesirable_weight);
    loss.validate()?;
    match kto_core::recommended_weight_ranges(
        args.desirable,
        args.undesirable,
        args.desirable_weight,
        args.undesirable_weight,
    ) {
        None => println!("balanced labels: any equal weights satisfy eq. 8"),
        Some(advice) => {
            let (d_lo, d_hi) = advice.desirable_range;
            let (u_lo, u_hi) = advice.undesirable_range;
            println!("desirable_weight in [{d_lo}, {d_hi}] (keeping undesirable_weight)");
            println!("undesirable_weight in [{u_lo}, {u_hi}] (keeping desirable_weight)");
            match kto_core::weight_warning(
                args.desirable,
                args.undesirable,
                args.desirable_weight,
                args.undesirable_weight,
            ) {
                Some(warning) => println!("warning: {warning}"),
                None => println!("the configured weights are in range"),
            }
        }
    }
    Ok(())
}
