//! Stage 7 of `kto train`: `run_summary.json` and the SVG plots of the log history.

use std::path::Path;

use anyhow::Result;
use serde_json::{Value, json};

use super::plot;

/// What the summary reports.
pub struct Summary<'a> {
    pub start_step: u64,
    pub end_step: u64,
    pub epoch: f64,
    pub train_rows: usize,
    pub dropped_rows: usize,
    pub runtime_s: f64,
    pub step_seconds: &'a [f64],
    pub history: &'a [Value],
    pub warnings: &'a [String],
    /// `--device` or `--devices` as given.
    pub device_names: &'a str,
    /// `fp32`, `bf16-mixed` (f32 master weights, bf16 matmuls) or `bf16-weights`.
    pub precision: &'a str,
    /// AdamW's moments' dtype (`f32`, or `bf16` with --bf16-moments; `null` for SGD).
    pub moments: Option<&'a str>,
    pub devices: u64,
}

/// Writes the summary and the plots into `output_dir`.
pub fn write(output_dir: &Path, s: &Summary<'_>) -> Result<()> {
    let last = |key: &str| s.history.iter().rev().find_map(|e| e.get(key).and_then(Value::as_f64));
    let summary = json!({
        "global_step": s.end_step,
        "epoch": s.epoch,
        "train_rows": s.train_rows,
        "dropped_rows": s.dropped_rows,
        "train_runtime_s": s.runtime_s,
        "train_steps_per_second": (s.end_step - s.start_step) as f64 / s.runtime_s,
        "step_seconds": s.step_seconds,
        "final": {"loss": last("loss"), "kl": last("kl"), "rewards/margins": last("rewards/margins")},
        "warnings": s.warnings,
        "device": s.device_names,
        "precision": s.precision,
        "optimizer_moments": s.moments,
        "devices": s.devices,
        "kto_version": env!("CARGO_PKG_VERSION"),
    });
    kto_models::write_atomic(&output_dir.join("run_summary.json"), serde_json::to_string_pretty(&summary)? + "\n")?;
    for (file, title, series) in [
        ("loss.svg", "loss", &["loss", "eval_loss"][..]),
        ("kl.svg", "KL estimate", &["kl", "eval_kl"][..]),
        ("rewards.svg", "rewards", &["rewards/chosen", "rewards/rejected", "rewards/margins"][..]),
    ] {
        if let Some(svg) = plot::svg(&plot::Chart { title, series }, s.history) {
            kto_models::write_atomic(&output_dir.join(file), svg)?;
        }
    }
    eprintln!(
        "trained {} steps in {:.1}s; model, metrics.jsonl, plots and run_summary.json in {}",
        s.end_step - s.start_step,
        s.runtime_s,
        output_dir.display()
    );
    Ok(())
}
