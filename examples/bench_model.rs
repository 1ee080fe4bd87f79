//! Writes a bench model with random seeded weights and tiny-qwen2's tokenizer as a Hugging Face
//! folder, for memory and speed runs of `kto train` (see `scripts/lora_memory.sh` and
//! `scripts/precision_memory.sh`): the 40M-parameter Qwen2-like model
//! (`benches/qwen2-40m-config.json`, the default) or a model of Qwen2.5-0.5B's shape
//! (`benches/qwen2-0.5b-config.json`: 494M parameters, vocabulary 151,936).
//!
//! Run: `cargo run --release --example bench_model -- OUT_DIR [40m|0.5b]`

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use kto::models::{DecoderConfig, SaveOptions, StorageDType, save_model};

const CONFIG_40M: &str = include_str!("../benches/qwen2-40m-config.json");
const CONFIG_05B: &str = include_str!("../benches/qwen2-0.5b-config.json");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: bench_model OUT_DIR [40m|0.5b]";
    let out: PathBuf = std::env::args().nth(1).ok_or(usage)?.into();
    let (text, name) = match std::env::args().nth(2).as_deref() {
        None | Some("40m") => (CONFIG_40M, "qwen2-40m-config.json"),
        Some("0.5b") => (CONFIG_05B, "qwen2-0.5b-config.json"),
        Some(other) => return Err(format!("unknown size {other:?}; {usage}").into()),
    };
    let config = DecoderConfig::from_json(text, Path::new(name))?;
    let device = Device::flex();
    device.seed(0);
    let model = config.init(&device);
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-qwen2");
    save_model(
        &model,
        &config,
        Some(&tokenizer),
        &out,
        &SaveOptions { dtype: Some(StorageDType::F32), max_shard_bytes: 5_000_000_000 },
    )?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
