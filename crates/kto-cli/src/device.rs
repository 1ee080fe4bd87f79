//! `--device`: the only place the binary picks a backend.

use anyhow::{Result, bail};
use burn::tensor::Device;

/// The device names this build accepts (depends on the compiled-in features).
pub fn compiled_devices() -> Vec<&'static str> {
    let mut names = vec![];
    if cfg!(feature = "flex") {
        names.push("flex");
    }
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu[:N]");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda[:N]");
    }
    names
}

/// Parses `flex`, `ndarray`, `wgpu`, `wgpu:N`, `cuda`, `cuda:N`.
///
/// # Errors
/// An unknown name, a bad index, or a backend this binary was built without; the message lists
/// the compiled-in options.
pub fn parse_device(spec: &str) -> Result<Device> {
    let (name, index) = match spec.split_once(':') {
        Some((name, index)) => {
            let index: usize =
                index.parse().map_err(|_| anyhow::anyhow!("device `{spec}`: `{index}` is not an index"))?;
            (name, Some(index))
        }
        None => (spec, None),
    };
    let device = match (name, index) {
        #[cfg(feature = "flex")]
        ("flex", None) => Some(Device::flex()),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        ("ndarray", None) => Some(Device::ndarray()),
        #[cfg(feature = "wgpu")]
        ("wgpu", index) => Some(Device::wgpu(match index {
            Some(i) => burn::tensor::DeviceKind::DiscreteGpu(i),
            None => burn::tensor::DeviceKind::DefaultDevice,
        })),
        #[cfg(feature = "cuda")]
        ("cuda", index) => Some(Device::cuda(index.unwrap_or(0))),
        _ => None,
    };
    match device {
        Some(device) => Ok(device),
        None => {
            bail!("unknown or not compiled-in device `{spec}`; this build supports: {}", compiled_devices().join(", "))
        }
    }
}
