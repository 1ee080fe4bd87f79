//! Test helpers shared by the kto crates (never a normal dependency).
//!
//! - [`device`] and [`cpu_devices`]: the CPU backends tests run on. Never `Device::default()`: it
//!   picks the most capable backend compiled in, so a `cuda` feature enabled anywhere in the build
//!   would silently move unit tests to a GPU.
//! - Named tolerances ([`EXACT_MATH`], [`CROSS_FRAMEWORK`]), [`tolerance`] and [`assert_close!`].
//! - [`fixture`] and [`read_jsonl`]: files under the workspace's `tests/fixtures/`.
#![deny(missing_docs)]

use std::path::PathBuf;

use burn::tensor::{Device, Tolerance};

/// Losses, KL and rewards recomputed from given log-probs: f32 arithmetic against TRL's float64
/// re-derivation of its own f32 numbers. `(relative, absolute)`.
pub const EXACT_MATH: (f64, f64) = (1e-6, 1e-6);
/// Sequence log-probs computed by burn against PyTorch's (different kernels and summation order).
/// `(relative, absolute)`.
pub const CROSS_FRAMEWORK: (f64, f64) = (1e-4, 1e-4);

/// One of the named `(relative, absolute)` pairs as a burn tolerance for
/// `TensorData::assert_approx_eq`.
pub fn tolerance((relative, absolute): (f64, f64)) -> Tolerance<f32> {
    Tolerance::rel_abs(relative, absolute)
}

/// The nine TRL 1.16 reference cases under `tests/fixtures/trl/` (see `shared/reference/run_cases.sh`).
pub const TRL_CASES: [&str; 9] = [
    "a_qwen_kto_sgd",
    "b_qwen_apo_sgd",
    "c_llama_weighted_adamw_ga2_trunc",
    "d_qwen_conversational",
    "e_qwen_pairwise_explicit",
    "f_llama_precompute_ref",
    "g_qwen_lora",
    "h_qwen_pairwise_implicit",
    "i_llama_conversational",
];

/// The default test device: the flex CPU backend.
pub fn device() -> Device {
    Device::flex()
}

/// Every CPU backend the parity tests run on: flex (the default) and ndarray (deterministic,
/// single device; deprecated upstream but the design's reference test backend).
pub fn cpu_devices() -> Vec<(&'static str, Device)> {
    #[allow(deprecated)]
    let ndarray = Device::ndarray();
    vec![("flex", Device::flex()), ("ndarray", ndarray)]
}

/// Set to `1` to add wgpu's default adapter to [`parity_devices`].
pub const WGPU_ENV: &str = "KTO_TEST_WGPU";

/// Set to `1` to add the default Vulkan adapter (SPIR-V kernels) to [`parity_devices`]: on a
/// machine with a Vulkan GPU driver. Mesa's lavapipe crashes in burn's compute pipelines, so
/// CI, which has no GPU, leaves it unset.
pub const VULKAN_ENV: &str = "KTO_TEST_VULKAN";

/// The devices of the model and log-prob parity tests: [`cpu_devices`], plus wgpu's default
/// adapter when `KTO_TEST_WGPU=1` and Vulkan's when `KTO_TEST_VULKAN=1`. Opt-in because an adapter needs a GPU driver or Mesa; CI
/// installs Mesa and sets it. On a machine without a GPU, also set
/// `VK_ICD_FILENAMES=/nonexistent XDG_RUNTIME_DIR=/tmp` so wgpu skips Vulkan (lavapipe crashes in
/// burn's compute pipelines) and lands on Mesa's software OpenGL.
///
/// # Panics
/// When `KTO_TEST_WGPU=1` or `KTO_TEST_VULKAN=1` but this crate was built without its
/// (default) `wgpu` or `vulkan` feature: the request is never silently dropped.
pub fn parity_devices() -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)]
    let mut devices = cpu_devices();
    if std::env::var(WGPU_ENV).is_ok_and(|v| v == "1") {
        #[cfg(feature = "wgpu")]
        devices.push(("wgpu", Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)));
        #[cfg(not(feature = "wgpu"))]
        panic!("{WGPU_ENV}=1 but kto-testkit was built without its wgpu feature");
    }
    if std::env::var(VULKAN_ENV).is_ok_and(|v| v == "1") {
        #[cfg(feature = "vulkan")]
        devices.push(("vulkan", Device::vulkan(burn::tensor::DeviceKind::DefaultDevice)));
        #[cfg(not(feature = "vulkan"))]
        panic!("{VULKAN_ENV}=1 but kto-testkit was built without its vulkan feature");
    }
    devices
}

/// Root of the workspace: the nearest ancestor of the running test's package (cargo sets
/// `CARGO_MANIFEST_DIR` when it runs a test) that holds `tests/fixtures`. Resolved at run time
/// so a test binary never points at the checkout it happened to be compiled from.
///
/// # Panics
/// When no ancestor holds `tests/fixtures`.
pub fn workspace_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    start
        .ancestors()
        .find(|dir| dir.join("tests/fixtures").is_dir())
        .unwrap_or_else(|| panic!("no tests/fixtures above {}", start.display()))
        .to_path_buf()
}

/// A path under `tests/fixtures/`.
pub fn fixture(relative: &str) -> PathBuf {
    workspace_root().join("tests/fixtures").join(relative)
}

/// Reads a JSONL fixture into one JSON value per line.
///
/// # Panics
/// When the file is missing or a line is not JSON (a broken fixture is a test bug).
pub fn read_jsonl(relative: &str) -> Vec<serde_json::Value> {
    read_jsonl_file(&fixture(relative))
}

/// Reads any JSONL file (for instance one a test just wrote), one value per non-blank line.
pub fn read_jsonl_file(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(i, line)| serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1)))
        .collect()
}

/// Reads a JSON fixture.
///
/// # Panics
/// When the file is missing or not JSON.
pub fn read_json(relative: &str) -> serde_json::Value {
    let path = fixture(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `a` zipped with `b` after asserting they have as many items, so a comparison of ours against
/// the expected values never stops silently at the shorter side.
///
/// # Panics
/// When the lengths differ (naming `what` and both lengths).
pub fn zip_eq<A, B>(a: A, b: B, what: &str) -> std::iter::Zip<A::IntoIter, B::IntoIter>
where
    A: IntoIterator,
    B: IntoIterator,
    A::IntoIter: ExactSizeIterator,
    B::IntoIter: ExactSizeIterator,
{
    let (a, b) = (a.into_iter(), b.into_iter());
    assert_eq!(a.len(), b.len(), "{what}: ours has {} items, the expected {}", a.len(), b.len());
    a.zip(b)
}

/// `true` when `actual` is within `rel * |expected| + abs` of `expected`.
pub fn is_close(actual: f64, expected: f64, rel: f64, abs: f64) -> bool {
    (actual - expected).abs() <= abs + rel * expected.abs()
}

/// Asserts two floats are close: `assert_close!(a, b, rel = 1e-6, abs = 1e-6)` or
/// `assert_close!(a, b, (rel, abs))` with one of the named tolerance pairs, plus an optional
/// context message.
#[macro_export]
macro_rules! assert_close {
    ($actual:expr, $expected:expr, rel = $rel:expr, abs = $abs:expr $(, $($msg:tt)+)?) => {{
        let (actual, expected): (f64, f64) = (($actual) as f64, ($expected) as f64);
        if !$crate::is_close(actual, expected, $rel, $abs) {
            panic!(
                "assert_close failed{}: actual {actual:e}, expected {expected:e}, diff {:e} (rel {}, abs {})",
                { #[allow(unused_mut)] let mut s = String::new(); $( s = format!(" ({})", format!($($msg)+)); )? s },
                (actual - expected).abs(), $rel, $abs
            );
        }
    }};
    ($actual:expr, $expected:expr, $tol:expr $(, $($msg:tt)+)?) => {{
        let (rel, abs): (f64, f64) = $tol;
        $crate::assert_close!($actual, $expected, rel = rel, abs = abs $(, $($msg)+)?)
    }};
}
