//! The devices every backend-comparing bench runs on: the CPU backends always, plus wgpu's default
//! adapter and CUDA device 0 when the root package is built with `--features wgpu` / `cuda`
//! (`cargo bench --features wgpu --bench train_step`).

use burn::prelude::*;

pub fn bench_devices() -> Vec<(&'static str, Device)> {
    #[allow(deprecated, unused_mut)]
    let mut devices = vec![("flex", Device::flex()), ("ndarray", Device::ndarray())];
    #[cfg(feature = "wgpu")]
    devices.push(("wgpu", Device::wgpu(DeviceKind::DefaultDevice)));
    #[cfg(feature = "cuda")]
    devices.push(("cuda", Device::cuda(0)));
    devices
}
