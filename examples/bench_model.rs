//! Writes the 40M-parameter Qwen2-like bench model (`benches/qwen2-40m-config.json`, random
//! seeded weights, tiny-qwen2's tokenizer) as a Hugging Face folder, for memory and speed runs
//! of `kto train` (see `scripts/lora_memory.sh`).
//!
//! Run: `cargo run --release --example bench_model -- OUT_DIR`

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use kto::models::{DecoderConfig, SaveOptions, StorageDType, save_model};

const CONFIG: &str = include_str!("../benches/qwen2-40m-config.json");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out: PathBuf = std::env::args().nth(1).ok_or("usage: bench_model OUT_DIR")?.into();
    let config = DecoderConfig::from_json(CONFIG, Path::new("qwen2-40m-config.json"))?;
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
