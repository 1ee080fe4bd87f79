//! `kto devices`: what each compiled-in device really computes. For every float dtype burn
//! reports as usable for arithmetic, a 128×128 matmul in that dtype is run and compared with the
//! f32 product; the precision modes `kto train` accepts on the device follow from what passed.
//! A GPU device also names its adapter (and cubecl's id for it: the PCI vendor and device
//! numbers), and `--matmul N` times an N×N matmul in each computing dtype (the figure to hold
//! against the chip's peak; on a GPU whose driver has cooperative matrices, bf16 and f16 run at
//! several times f32's rate on `vulkan`).

use std::time::Instant;

use anyhow::{Result, bail};
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
    /// Also time an N×N matmul in each dtype the device computes (0: do not), reporting
    /// GFLOP/s; a few warm-up products first, then the median of several timed ones.
    #[arg(long, default_value_t = 0)]
    matmul: usize,
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
    /// `--matmul`'s throughput, when asked for and the dtype computes.
    gflops: Option<f64>,
}

/// One device's report: its burn device and what it computes, or why it is not there.
struct Report {
    spec: DeviceSpec,
    outcome: Result<Found, String>,
}

struct Found {
    burn_device: String,
    /// The adapter's name and cubecl's id for it, for a cubecl device.
    adapter: Option<(String, String)>,
    probes: Vec<Probe>,
}

pub fn devices(args: &DevicesArgs) -> Result<()> {
    let named = !args.devices.0.is_empty();
    let specs = if named {
        args.devices.0.clone()
    } else {
        crate::device::compiled_devices()
            .iter()
            .map(|name| name.trim_end_matches("[:N]").parse().expect("a compiled-in name parses"))
            .collect()
    };
    let mut report = Vec::new();
    for spec in specs {
        let outcome = spec.device().map_err(|e| format!("{e:#}")).map(|device| {
            let probes: Vec<Probe> = DTYPES
                .iter()
                .map(|&(dtype, name, tolerance)| {
                    let mut probe = probe(&device, dtype, name, tolerance);
                    if probe.computes && args.matmul > 0 {
                        probe.gflops = Some(matmul_gflops(&device, dtype, args.matmul));
                    }
                    probe
                })
                .collect();
            Found { burn_device: format!("{device:?}"), adapter: adapter(&device), probes }
        });
        report.push(Report { spec, outcome });
    }
    if args.json {
        let entries: Vec<Value> = report.iter().map(entry).collect();
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        println!("| device | burn device | adapter | f32 | f16 | bf16 | kto train precision |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for r in &report {
            match &r.outcome {
                Ok(found) => {
                    let cells: Vec<String> = found.probes.iter().map(cell).collect();
                    let adapter = found.adapter.as_ref().map_or("-".into(), |(name, id)| format!("{name} ({id})"));
                    println!(
                        "| {} | {} | {adapter} | {} | {} |",
                        r.spec,
                        found.burn_device,
                        cells.join(" | "),
                        modes(&found.probes).join(", ")
                    );
                }
                Err(why) => println!("| {} | unavailable: {why} | - | - | - | - | - |", r.spec),
            }
        }
    }
    // A device asked for by name must be there; the default listing reports what is missing.
    if let Some(missing) = report.iter().find(|r| named && r.outcome.is_err()) {
        bail!("{}", missing.outcome.as_ref().err().expect("an error"));
    }
    Ok(())
}

/// The adapter's name and cubecl's id for it (on wgpu `spirv_<vendor>_<device>` from the PCI
/// ids, whichever language the kernels are compiled to; `ptx_sm…` on CUDA); `None` for the CPU
/// backends.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn adapter(device: &Device) -> Option<(String, String)> {
    device.identity().map(|id| (id.name, id.fingerprint))
}

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
fn adapter(_device: &Device) -> Option<(String, String)> {
    None
}

/// GFLOP/s of an `n`×`n` matmul in `dtype` (2n³ operations per product): the median of five
/// timed products after two warm-up ones, each synchronised so the time is the device's.
fn matmul_gflops(device: &Device, dtype: FloatDType, n: usize) -> f64 {
    let operand = |seed: u64| {
        device.seed(seed);
        Tensor::<2>::random([n, n], burn::tensor::Distribution::Uniform(-1.0, 1.0), device).cast(dtype)
    };
    let (a, b) = (operand(1), operand(2));
    let run = || {
        let start = Instant::now();
        let product = a.clone().matmul(b.clone());
        // Reading one element waits for the product; sync covers backends that queue work.
        let _ = product.slice([0..1, 0..1]).into_data();
        device.sync().expect("the device ran the matmul");
        start.elapsed().as_secs_f64()
    };
    for _ in 0..2 {
        run();
    }
    let mut times: Vec<f64> = (0..5).map(|_| run()).collect();
    times.sort_by(f64::total_cmp);
    2.0 * (n as f64).powi(3) / times[2] / 1e9
}

/// The matmul of two fixed 128×128 inputs in `dtype` against the f32 product.
fn probe(device: &Device, dtype: FloatDType, name: &'static str, tolerance: f64) -> Probe {
    let reported = device.supports_dtype(DType::from(dtype));
    if !reported {
        return Probe { name, reported, error: None, computes: false, gflops: None };
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
    Probe { name, reported, error: Some(error), computes: error.is_finite() && error <= tolerance, gflops: None }
}

fn cell(p: &Probe) -> String {
    match (p.reported, p.error) {
        (false, _) => "no (burn: no arithmetic)".into(),
        (true, Some(e)) if p.computes => match p.gflops {
            Some(g) => format!("yes (matmul error {e:.1e}, {g:.0} GFLOP/s)"),
            None => format!("yes (matmul error {e:.1e})"),
        },
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

fn entry(r: &Report) -> Value {
    let found = match &r.outcome {
        Ok(found) => found,
        Err(why) => return json!({"device": r.spec.to_string(), "available": false, "error": why}),
    };
    let dtypes: serde_json::Map<String, Value> = found
        .probes
        .iter()
        .map(|p| {
            let probe = json!({"reported": p.reported, "matmul_error": p.error, "computes": p.computes, "matmul_gflops": p.gflops});
            (p.name.to_string(), probe)
        })
        .collect();
    let adapter = found.adapter.as_ref().map(|(name, id)| json!({"name": name, "id": id}));
    json!({
        "device": r.spec.to_string(),
        "available": true,
        "burn_device": found.burn_device,
        "adapter": adapter,
        "dtypes": dtypes,
        "train_precision": modes(&found.probes),
    })
}
