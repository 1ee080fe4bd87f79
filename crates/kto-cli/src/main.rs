//! The `kto` command line.
//!
//! The only crate that picks devices and does I/O for training; the logic lives in the libraries.

mod audit;
mod choices;
mod data_args;
mod device;
mod devices;
mod heap;
mod logps;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kto_data::{HfTokenizer, Message};
use kto_models::{GenerationConfig, LoadOptions, SaveOptions, StorageDType, generate, load_model, save_model};

use crate::device::DeviceSpec;

/// KTO preference training for causal language models (Llama, Qwen2/3, Mistral, OLMo 2, SmolLM3, Gemma 2/3, Phi-3), TRL-compatible.
#[derive(Debug, Parser)]
#[command(name = "kto", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the recommended desirable/undesirable weight ranges (KTO paper eq. 8, TRL's rule)
    /// for a dataset's label counts.
    Weights(WeightsArgs),
    /// Continue a prompt with a Hugging Face model folder.
    Generate(GenerateArgs),
    /// Re-save a Hugging Face model folder (change the dtype on disk, shard it).
    Convert(ConvertArgs),
    /// Read and tokenize a dataset as training would, and report what the trainer will see:
    /// label counts, weight advice, dropped and truncated rows, token lengths, KL pairs.
    Audit(audit::AuditArgs),
    /// Write each processed row's completion log-probs (matched and KL sequences) under a
    /// model, and optionally a reference model, batched as training batches them.
    Logps(logps::LogpsArgs),
    /// Train a model with KTO (TRL's KTOTrainer settings). Without arguments, trains a bundled
    /// demo on the CPU.
    Train(Box<train::TrainArgs>),
    /// Merge a PEFT LoRA adapter into its base model and write a plain Hugging Face folder.
    Merge(MergeArgs),
    /// Probe each compiled-in device: which float dtypes really compute (a matmul in each,
    /// against f32), and which `kto train` precision settings it therefore accepts.
    Devices(devices::DevicesArgs),
}

#[derive(Debug, clap::Args)]
struct MergeArgs {
    /// Base model folder or hub id.
    #[arg(long)]
    model: String,
    /// PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Destination folder (replaced if it exists).
    #[arg(long)]
    out: PathBuf,
    /// Dtype on disk: float32, bfloat16 or float16 (default: as the base config records).
    #[arg(long)]
    dtype: Option<String>,
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
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    desirable_weight: f64,
    /// The configured undesirable weight (TRL's `undesirable_weight`).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    undesirable_weight: f64,
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// Hugging Face model folder (config.json, safetensors, tokenizer files).
    #[arg(long)]
    model: PathBuf,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Render the prompt as one user message through the tokenizer's chat template.
    #[arg(long)]
    chat: bool,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sample instead of greedy decoding (defaults to the folder's generation_config.json).
    #[arg(long)]
    do_sample: Option<bool>,
    /// Sampling temperature.
    #[arg(long)]
    temperature: Option<f64>,
    /// Keep the k most likely tokens when sampling (0 = off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling threshold (1.0 = off).
    #[arg(long)]
    top_p: Option<f64>,
    /// Sampler seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The device (as compiled in).
    #[arg(long, default_value_t = device::default_device(), value_parser = choices::devices::<DeviceSpec>())]
    device: DeviceSpec,
    /// A PEFT LoRA adapter folder to apply to the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ConvertArgs {
    /// Source Hugging Face model folder.
    #[arg(long)]
    model: PathBuf,
    /// Destination folder (replaced if it exists).
    #[arg(long)]
    out: PathBuf,
    /// Dtype on disk: float32, bfloat16 or float16 (default: as the source config records).
    #[arg(long)]
    dtype: Option<String>,
    /// Largest shard in bytes.
    #[arg(long, default_value_t = 5_000_000_000)]
    max_shard_bytes: u64,
    /// Device used to hold the weights while converting.
    #[arg(long, default_value_t = device::default_device(), value_parser = choices::devices::<DeviceSpec>())]
    device: DeviceSpec,
}

fn main() -> ExitCode {
    let cli = parse_cli();
    if matches!(cli.command, Command::Train(_) | Command::Logps(_) | Command::Generate(_)) {
        heap::tune();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line, with negative numbers accepted as values everywhere (`--beta -1`
/// reaches validation, which names the setting, instead of clap's "unexpected argument").
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let command = Cli::command().allow_negative_numbers(true).mut_subcommands(|s| s.allow_negative_numbers(true));
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Weights(args) => weights(&args),
        Command::Generate(args) => generate_command(&args),
        Command::Convert(args) => convert(&args),
        Command::Audit(args) => audit::audit(&args),
        Command::Logps(args) => logps::logps(&args),
        Command::Train(args) => train::train(&args),
        Command::Merge(args) => merge(&args),
        Command::Devices(args) => devices::devices(&args),
    }
}

fn weights(args: &WeightsArgs) -> Result<()> {
    let loss = kto_core::KtoLossConfig::new()
        .with_desirable_weight(args.desirable_weight)
        .with_undesirable_weight(args.undesirable_weight);
    loss.validate()?;
    let (nd, nu, wd, wu) = (args.desirable, args.undesirable, args.desirable_weight, args.undesirable_weight);
    match kto_core::recommended_weight_ranges(nd, nu, wd, wu) {
        None => println!("balanced labels: any equal weights satisfy eq. 8"),
        Some(advice) => {
            let (d_lo, d_hi) = advice.desirable_range;
            let (u_lo, u_hi) = advice.undesirable_range;
            println!("desirable_weight in [{d_lo}, {d_hi}] (keeping undesirable_weight)");
            println!("undesirable_weight in [{u_lo}, {u_hi}] (keeping desirable_weight)");
            match kto_core::weight_warning(nd, nu, wd, wu) {
                Some(warning) => println!("warning: {warning}"),
                None => println!("the configured weights are in range"),
            }
        }
    }
    Ok(())
}

fn generate_command(args: &GenerateArgs) -> Result<()> {
    let device = args.device.device()?;
    let (config, model) = load_model(&args.model, &device, &LoadOptions::default())
        .with_context(|| format!("loading model from {}", args.model.display()))?;
    let model = match &args.adapter {
        Some(dir) => {
            kto_models::load_adapter(model, dir)
                .with_context(|| format!("loading the adapter from {}", dir.display()))?
                .0
        }
        None => model,
    };
    let tokenizer = HfTokenizer::from_folder(&args.model)
        .with_context(|| format!("loading tokenizer from {}", args.model.display()))?;
    let (text, add_special) = if args.chat {
        let message = Message::new("user", args.prompt.clone());
        (tokenizer.apply_chat_template(&[message], true)?, false)
    } else {
        (args.prompt.clone(), true)
    };
    let prompt = tokenizer.encode(&text, add_special)?;
    anyhow::ensure!(!prompt.is_empty(), "the prompt encodes to no tokens");
    let mut settings = GenerationConfig::from_folder(&args.model, &config.eos_token_ids)?;
    if let Some(eos) = tokenizer.eos_id().filter(|id| !settings.eos_token_ids.contains(id)) {
        settings.eos_token_ids.push(eos);
    }
    settings.max_new_tokens = args.max_new_tokens;
    settings.seed = args.seed;
    settings.do_sample = args.do_sample.unwrap_or(settings.do_sample);
    settings.temperature = args.temperature.unwrap_or(settings.temperature);
    settings.top_k = args.top_k.unwrap_or(settings.top_k);
    settings.top_p = args.top_p.unwrap_or(settings.top_p);
    let new = generate(&model, &prompt, &settings, &device);
    println!("{}", tokenizer.decode(&new, true)?);
    Ok(())
}

fn storage_dtype(name: Option<&str>) -> Result<Option<StorageDType>> {
    name.map(|name| {
        StorageDType::from_config_name(name)
            .with_context(|| format!("--dtype `{name}`: expected float32, bfloat16 or float16"))
    })
    .transpose()
}

fn merge(args: &MergeArgs) -> Result<()> {
    let folder = data_args::model_folder(&args.model)?;
    let device = device::default_device().device()?;
    let (config, model) = load_model(&folder, &device, &LoadOptions::default())
        .with_context(|| format!("loading model from {}", folder.display()))?;
    let (model, _) = kto_models::load_adapter(model, &args.adapter)
        .with_context(|| format!("loading the adapter from {}", args.adapter.display()))?;
    let options = SaveOptions { dtype: storage_dtype(args.dtype.as_deref())?, max_shard_bytes: 5_000_000_000 };
    kto_models::merge_into_folder(model, &config, &folder, &args.out, &options)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn convert(args: &ConvertArgs) -> Result<()> {
    let dtype = storage_dtype(args.dtype.as_deref())?;
    let device = args.device.device()?;
    let (config, model) = load_model(&args.model, &device, &LoadOptions::default())
        .with_context(|| format!("loading model from {}", args.model.display()))?;
    save_model(
        &model,
        &config,
        Some(&args.model),
        &args.out,
        &SaveOptions { dtype, max_shard_bytes: args.max_shard_bytes },
    )
    .with_context(|| format!("saving model to {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
