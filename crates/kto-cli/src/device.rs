//! `--device` and `--devices`: the only place the binary picks a backend. Names are parsed into
//! [`DeviceSpec`]s at the edge (flags and config files alike); a device is made from one only
//! when the run starts.

use std::fmt;
use std::str::FromStr;

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
    if cfg!(feature = "vulkan") {
        names.push("vulkan[:N]");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda[:N]");
    }
    names
}

/// The first backend compiled in (flex in a default build): `--device`'s default.
pub fn default_device() -> DeviceSpec {
    let first = compiled_devices()[0];
    first.trim_end_matches("[:N]").parse().expect("a compiled-in name parses")
}

/// One device: `flex`, `ndarray`, `wgpu[:N]`, `vulkan[:N]` or `cuda[:N]`, as compiled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The flex CPU backend.
    Flex,
    /// The ndarray CPU backend (deterministic).
    Ndarray,
    /// A wgpu adapter on whichever graphics API wgpu settles on (`None`: the default adapter;
    /// `Some(i)`: the i-th discrete GPU).
    Wgpu(Option<usize>),
    /// A GPU through Vulkan, its kernels compiled to SPIR-V (cooperative-matrix matmuls where
    /// the driver has them). `None`: the first discrete GPU, else the first integrated one;
    /// `Some(i)`: the i-th discrete GPU.
    Vulkan(Option<usize>),
    /// A CUDA device (`None`: device 0).
    Cuda(Option<usize>),
}

impl DeviceSpec {
    /// Whether this is a CUDA device.
    pub fn is_cuda(self) -> bool {
        matches!(self, Self::Cuda(_))
    }

    /// Whether this is one of the CPU backends.
    pub fn is_cpu(self) -> bool {
        matches!(self, Self::Flex | Self::Ndarray)
    }

    /// The burn device.
    ///
    /// # Errors
    /// A GPU that is not there: `wgpu:N` or `vulkan[:N]` naming an adapter the machine does not
    /// have, or `vulkan` on a machine whose only Vulkan adapter is a software one (Mesa's
    /// lavapipe, whose compute pipelines crash on burn's kernels). The message lists the
    /// adapters found.
    pub fn device(self) -> anyhow::Result<Device> {
        match self {
            #[cfg(feature = "flex")]
            Self::Flex => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Self::Ndarray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            Self::Wgpu(None) => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "wgpu")]
            Self::Wgpu(Some(i)) => {
                gpu::present(self, Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(i)), gpu::Api::Wgpu)
            }
            #[cfg(feature = "vulkan")]
            Self::Vulkan(index) => gpu::vulkan(self, index),
            #[cfg(feature = "cuda")]
            Self::Cuda(index) => Ok(Device::cuda(index.unwrap_or(0))),
            #[allow(unreachable_patterns)]
            other => unreachable!("{other} is refused by parsing in this build"),
        }
    }
}

/// Finding a GPU adapter before anything runs on it: burn opens a device lazily and panics on
/// first use when it is missing.
#[cfg(feature = "wgpu")]
mod gpu {
    use anyhow::{Result, bail};
    use burn::tensor::{Device, DeviceKind, DeviceType};

    use super::DeviceSpec;

    #[derive(Clone, Copy)]
    pub enum Api {
        Wgpu,
        #[cfg(feature = "vulkan")]
        Vulkan,
    }

    /// The adapters wgpu finds on `api`, without opening them.
    fn adapters(api: Api) -> Vec<Device> {
        let kind = match api {
            Api::Wgpu => DeviceType::Wgpu,
            #[cfg(feature = "vulkan")]
            Api::Vulkan => DeviceType::Vulkan,
        };
        Device::enumerate(kind).into_vec()
    }

    fn listing(found: &[Device]) -> String {
        if found.is_empty() {
            return "none".into();
        }
        found.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>().join(", ")
    }

    /// `device` if wgpu finds it on `api`.
    pub fn present(spec: DeviceSpec, device: Device, api: Api) -> Result<Device> {
        let found = adapters(api);
        if found.contains(&device) {
            return Ok(device);
        }
        bail!("device `{spec}`: no such adapter; adapters found: {}", listing(&found))
    }

    /// `vulkan[:N]`: a hardware adapter pinned to Vulkan.
    #[cfg(feature = "vulkan")]
    pub fn vulkan(spec: DeviceSpec, index: Option<usize>) -> Result<Device> {
        let pin = Device::vulkan;
        if let Some(i) = index {
            return present(spec, pin(DeviceKind::DiscreteGpu(i)), Api::Vulkan);
        }
        let found = adapters(Api::Vulkan);
        for kind in [DeviceKind::DiscreteGpu(0), DeviceKind::IntegratedGpu(0), DeviceKind::VirtualGpu(0)] {
            let device = pin(kind);
            if found.contains(&device) {
                return Ok(device);
            }
        }
        if found.contains(&pin(DeviceKind::Cpu)) {
            bail!(
                "device `{spec}`: the only Vulkan adapter is a software one (Mesa's lavapipe), whose compute pipelines crash on burn's kernels; on this machine use `wgpu` (OpenGL) or `flex`"
            );
        }
        bail!("device `{spec}`: no Vulkan GPU found (adapters: {}); is a Vulkan driver installed?", listing(&found))
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    /// Parses `flex`, `ndarray`, `wgpu`, `wgpu:N`, `vulkan`, `vulkan:N`, `cuda`, `cuda:N`.
    ///
    /// # Errors
    /// An unknown name, a bad index, or a backend this binary was built without; the message
    /// lists the compiled-in options.
    fn from_str(spec: &str) -> Result<Self, String> {
        let (name, index) = match spec.split_once(':') {
            Some((name, index)) => {
                let index: usize = index.parse().map_err(|_| format!("device `{spec}`: `{index}` is not an index"))?;
                (name, Some(index))
            }
            None => (spec, None),
        };
        let parsed = match (name, index) {
            ("flex", None) if cfg!(feature = "flex") => Some(Self::Flex),
            ("ndarray", None) if cfg!(feature = "ndarray") => Some(Self::Ndarray),
            ("wgpu", index) if cfg!(feature = "wgpu") => Some(Self::Wgpu(index)),
            ("vulkan", index) if cfg!(feature = "vulkan") => Some(Self::Vulkan(index)),
            ("cuda", index) if cfg!(feature = "cuda") => Some(Self::Cuda(index)),
            _ => None,
        };
        parsed.ok_or_else(|| {
            format!(
                "unknown or not compiled-in device `{spec}`; this build supports: {}",
                compiled_devices().join(", ")
            )
        })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, index) = match self {
            Self::Flex => ("flex", None),
            Self::Ndarray => ("ndarray", None),
            Self::Wgpu(i) => ("wgpu", *i),
            Self::Vulkan(i) => ("vulkan", *i),
            Self::Cuda(i) => ("cuda", *i),
        };
        match index {
            Some(i) => write!(f, "{name}:{i}"),
            None => f.write_str(name),
        }
    }
}

/// Data-parallel devices (`cuda:0,cuda:1`); empty means the single `--device`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceList(pub Vec<DeviceSpec>);

impl FromStr for DeviceList {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, String> {
        list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse).collect::<Result<_, _>>().map(Self)
    }
}

impl fmt::Display for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&names.join(","))
    }
}

/// Serde as the text of `Display` / `FromStr` (a device name, or a comma-separated list, which
/// a config file may also give as a list).
macro_rules! serde_as_text {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                kto_core::text_or_list(deserializer)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_text!(DeviceSpec);
serde_as_text!(DeviceList);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_build() {
        for name in ["flex", "ndarray"] {
            assert_eq!(name.parse::<DeviceSpec>().expect(name).to_string(), name);
        }
        let list: DeviceList = "flex, ndarray".parse().expect("list");
        assert_eq!(list.0, [DeviceSpec::Flex, DeviceSpec::Ndarray]);
        assert_eq!(list.to_string(), "flex,ndarray");
        assert_eq!("".parse::<DeviceList>().expect("empty"), DeviceList::default());
        let err = "tpu".parse::<DeviceSpec>().expect_err("unknown");
        assert!(err.starts_with("unknown or not compiled-in device `tpu`; this build supports: flex"), "{err}");
        assert!("flex:x".parse::<DeviceSpec>().expect_err("index").contains("`x` is not an index"));
    }
}
