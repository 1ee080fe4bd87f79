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

/// One device: `flex`, `ndarray`, `wgpu[:N]` or `cuda[:N]`, as compiled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The flex CPU backend.
    Flex,
    /// The ndarray CPU backend (deterministic).
    Ndarray,
    /// A wgpu adapter (`None`: the default one).
    Wgpu(Option<usize>),
    /// A CUDA device (`None`: device 0).
    Cuda(Option<usize>),
}

impl DeviceSpec {
    /// Whether this is a CUDA device.
    pub fn is_cuda(self) -> bool {
        matches!(self, Self::Cuda(_))
    }

    /// The burn device.
    pub fn device(self) -> Device {
        match self {
            #[cfg(feature = "flex")]
            Self::Flex => Device::flex(),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Self::Ndarray => Device::ndarray(),
            #[cfg(feature = "wgpu")]
            Self::Wgpu(index) => Device::wgpu(match index {
                Some(i) => burn::tensor::DeviceKind::DiscreteGpu(i),
                None => burn::tensor::DeviceKind::DefaultDevice,
            }),
            #[cfg(feature = "cuda")]
            Self::Cuda(index) => Device::cuda(index.unwrap_or(0)),
            #[allow(unreachable_patterns)]
            other => unreachable!("{other} is refused by parsing in this build"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    /// Parses `flex`, `ndarray`, `wgpu`, `wgpu:N`, `cuda`, `cuda:N`.
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
