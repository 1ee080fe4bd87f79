//! `kto devices`: what each compiled-in device really computes. For every float dtype burn
//! reports as usable for arithmetic, a 128×128 matmul in that dtype is run and compared with the
//! f32 product; the precision modes `kto train` accepts on the device follow from what passed.

use anyhow::Result;
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use serde_json::{Value, json};

use crate::choices;
use crate::device::{DeviceList, DeviceSpec};

#[derive(Debug, clap::Args)]
pub struct DevicesArgs {
    /// Devices to probe, comma-separated (default: each compiled-in backend's default device).
    #[arg(long, value_parser = choices::devices::<DeviceList>(), default_value = "")]
    devices: DeviceList,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The dtypes probed, with the largest relative error (Frobenius norm) of a product of
/// [-1, 1) inputs rounded to them: bf16's inputs carry 2^-9 relative error, f16's 2^-12.
const DTYPES: [(FloatDType, &str, f64); 3] =
    [(FloatDType::F32, "f32", 1e-5), (FloatDType::F16, "f16", 2e-3), (FloatDType::BF16, "bf16", 1.5e-2)];

/// One dtype on one device.
struct Probe {
    name: &'static str,
    /// burn reports the dtype usable for storage and arithmetic.
    reported: bool,
    /// The matmul's relative error against f32, when it ran.
    error: Option<f64>,
    computes: bool,
}

pub fn devices(args: &DevicesArgs) -> Result<()> {
    let specs = if args.devices.0.is_empty() {
        crate::device::compiled_devices()
            .iter()
            .map(|name| name.trim_end_matches("[:N]").parse().expect("a compiled-in name parses"))
            .collect()
    } else {
        args.devices.0.clone()
    };
    let mut report = Vec::new();
    for spec in specs {
        let device = spec.device();
        let probes: Vec<Probe> =
            DTYPES.iter().map(|&(dtype, name, tolerance)| probe(&device, dtype, name, tolerance)).collect();
        report.push((spec, format!("{device:?}"), probes));
    }
    if args.json {
        let entries: Vec<Value> = report.iter().map(|(spec, device, probes)| entry(*spec, device, probes)).collect();
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        println!("| device | burn device | f32 | f16 | bf16 | kto train precision |");
        println!("| --- | --- | --- | --- | --- | --- |");
        for (spec, device, probes) in &report {
            let cells: Vec<String> = probes.iter().map(cell).collect();
            println!("| {spec} | {device} | {} | {} |", cells.join(" | "), modes(probes).join(", "));
        }
    }
    Ok(())
}

/// The matmul of two fixed 128×128 inputs in `dtype` against the f32 product.
fn probe(device: &Device, dtype: FloatDType, name: &'static str, tolerance: f64) -> Probe {
    let reported = device.supports_dtype(DType::from(dtype));
    if !reported {
        return Probe { name, reported, error: None, computes: false };
    }
    let n: usize = 128;
    // Deterministic inputs in [-1, 1): a multiplicative hash of the index.
    let values = |salt: u64| -> Vec<f32> {
        (0..(n * n) as u64)
            .map(|i| {
                ((i.wrapping_add(salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32 / (1u64 << 23) as f32) * 2.0
                    - 1.0
            })
            .collect()
    };
    let tensor = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [n, n]), (device, DType::F32));
    let (a, b) = (tensor(values(1)), tensor(values(2)));
    let exact = a.clone().matmul(b.clone());
    let product = a.cast(dtype).matmul(b.cast(dtype)).cast(FloatDType::F32);
    let norm = |t: Tensor<2>| f64::from(t.clone().mul(t).sum().sqrt().into_scalar::<f32>());
    let error = norm(product - exact.clone()) / norm(exact);
    Probe { name, reported, error: Some(error), computes: error.is_finite() && error <= tolerance }
}

fn cell(p: &Probe) -> String {
    match (p.reported, p.error) {
        (false, _) => "no (burn: no arithmetic)".into(),
        (true, Some(e)) if p.computes => format!("yes (matmul error {e:.1e})"),
        (true, Some(e)) => format!("FAILS (matmul error {e:.1e})"),
        (true, None) => "FAILS".into(),
    }
}

/// The `kto train` precision settings the device can run.
fn modes(probes: &[Probe]) -> Vec<&'static str> {
    let computes = |name: &str| probes.iter().any(|p| p.name == name && p.computes);
    let mut out = Vec::new();
    if computes("f32") {
        out.push("fp32");
    }
    if computes("bf16") {
        out.extend(["--bf16", "--bf16-weights", "--bf16-moments"]);
    }
    out
}

fn entry(spec: DeviceSpec, device: &str, probes: &[Probe]) -> Value {
    let dtypes: serde_json::Map<String, Value> = probes
        .iter()
        .map(|p| (p.name.to_string(), json!({"reported": p.reported, "matmul_error": p.error, "computes": p.computes})))
        .collect();
    json!({"device": spec.to_string(), "burn_device": device, "dtypes": dtypes, "train_precision": modes(probes)})
}
