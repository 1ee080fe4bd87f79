//! Reading and writing safetensors files (single or sharded) with Hugging Face key names and
//! PyTorch layouts.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, View};
use serde_json::Value;

use crate::error::{Error, Result, TensorProblem};

/// Where one tensor lives on disk.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub file: PathBuf,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: u64,
    pub end: u64,
}

/// The tensors of a model folder: `model.safetensors` or the shards of
/// `model.safetensors.index.json`.
#[derive(Debug, Clone)]
pub(crate) struct CheckpointIndex {
    pub entries: BTreeMap<String, Entry>,
}

pub(crate) const SINGLE_FILE: &str = "model.safetensors";
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";

impl CheckpointIndex {
    pub fn open(folder: &Path) -> Result<Self> {
        let index_path = folder.join(INDEX_FILE);
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|source| Error::Io { path: index_path.clone(), source })?;
            let index: Value =
                serde_json::from_str(&text).map_err(|source| Error::Json { path: index_path.clone(), source })?;
            let map = index.get("weight_map").and_then(Value::as_object).ok_or_else(|| Error::Config {
                path: index_path.clone(),
                field: "weight_map".into(),
                reason: "missing or not an object".into(),
            })?;
            let mut files: Vec<&str> = map.values().filter_map(Value::as_str).collect();
            files.sort_unstable();
            files.dedup();
            files.into_iter().map(|f| folder.join(f)).collect()
        } else {
            vec![folder.join(SINGLE_FILE)]
        };
        let mut entries = BTreeMap::new();
        for file in files {
            for (key, entry) in read_header(&file)? {
                entries.insert(key, entry);
            }
        }
        Ok(Self { entries })
    }
}

/// Parses a safetensors header without reading the data.
fn read_header(path: &Path) -> Result<Vec<(String, Entry)>> {
    let io = |source| Error::Io { path: path.into(), source };
    let bad = |reason: String| Error::Safetensors { path: path.into(), reason };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes).map_err(io)?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(bad(format!("header length {header_len} does not fit a {file_len}-byte file")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let header: BTreeMap<String, Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let data_start = 8 + header_len;
    let mut out = Vec::new();
    for (key, info) in header {
        if key == "__metadata__" {
            continue;
        }
        let dtype = info.get("dtype").and_then(Value::as_str).ok_or_else(|| bad(format!("`{key}` has no dtype")))?;
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).map(|d| d as usize).collect())
            .ok_or_else(|| bad(format!("`{key}` has no shape")))?;
        let offsets: Vec<u64> = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .ok_or_else(|| bad(format!("`{key}` has no data_offsets")))?;
        let (start, end) = (data_start + offsets[0], data_start + offsets[1]);
        if end > file_len || start > end {
            return Err(bad(format!("`{key}` data lies outside the file")));
        }
        out.push((key, Entry { file: path.into(), dtype: dtype.to_string(), shape, start, end }));
    }
    Ok(out)
}

impl Entry {
    /// The values as f32 (bf16/f16 widen exactly), or a problem.
    pub fn read_f32(&self, key: &str) -> Result<std::result::Result<Vec<f32>, TensorProblem>> {
        let io = |source| Error::Io { path: self.file.clone(), source };
        let width = match self.dtype.as_str() {
            "F32" => 4,
            "BF16" | "F16" => 2,
            "F64" => 8,
            other => {
                return Ok(Err(TensorProblem::UnsupportedDType {
                    file: file_name(&self.file),
                    key: key.into(),
                    dtype: other.into(),
                }));
            }
        };
        let count: usize = self.shape.iter().product();
        if (self.end - self.start) as usize != count * width {
            return Err(Error::Safetensors {
                path: self.file.clone(),
                reason: format!("`{key}`: {} bytes for {count} {} values", self.end - self.start, self.dtype),
            });
        }
        let mut file = std::fs::File::open(&self.file).map_err(io)?;
        file.seek(SeekFrom::Start(self.start)).map_err(io)?;
        let mut bytes = vec![0u8; (self.end - self.start) as usize];
        file.read_exact(&mut bytes).map_err(io)?;
        let values = match self.dtype.as_str() {
            "F32" => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            "BF16" => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            "F16" => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            _ => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
                .collect(),
        };
        Ok(Ok(values))
    }
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// The dtype tensors are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDType {
    /// `float32`.
    F32,
    /// `bfloat16`.
    BF16,
    /// `float16`.
    F16,
}

impl StorageDType {
    /// From a config's `torch_dtype`/`dtype` string.
    pub fn from_config_name(name: &str) -> Option<Self> {
        match name {
            "float32" => Some(Self::F32),
            "bfloat16" => Some(Self::BF16),
            "float16" => Some(Self::F16),
            _ => None,
        }
    }

    /// The config's name for it.
    pub fn config_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::BF16 => "bfloat16",
            Self::F16 => "float16",
        }
    }

    fn encode(self, values: &[f32]) -> (Dtype, Vec<u8>) {
        match self {
            Self::F32 => (Dtype::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            Self::BF16 => (Dtype::BF16, values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect()),
            Self::F16 => (Dtype::F16, values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect()),
        }
    }
}

/// One tensor ready to be written.
pub(crate) struct OwnedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl OwnedTensor {
    pub fn new(values: &[f32], shape: Vec<usize>, dtype: StorageDType) -> Self {
        let (dtype, bytes) = dtype.encode(values);
        Self { dtype, shape, bytes }
    }
}

impl View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes `tensors` (in order) into `folder` as one file, or as shards of at most
/// `max_shard_bytes` with an index, the way transformers names them.
pub(crate) fn write_tensors(folder: &Path, tensors: &[(String, OwnedTensor)], max_shard_bytes: u64) -> Result<()> {
    let mut shards: Vec<Vec<&(String, OwnedTensor)>> = vec![vec![]];
    let mut current = 0u64;
    for t in tensors {
        let size = t.1.bytes.len() as u64;
        if current > 0 && current + size > max_shard_bytes {
            shards.push(vec![]);
            current = 0;
        }
        shards.last_mut().expect("at least one shard").push(t);
        current += size;
    }
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let write = |name: &str, shard: &[&(String, OwnedTensor)]| -> Result<()> {
        let path = folder.join(name);
        crate::write_atomic_with(&path, |tmp| {
            safetensors::serialize_to_file(shard.iter().map(|(k, t)| (k.as_str(), t)), metadata.clone(), tmp)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .map_err(|e| Error::Safetensors { path, reason: e.to_string() })
    };
    if shards.len() == 1 {
        return write(SINGLE_FILE, &shards[0]);
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let total: u64 = tensors.iter().map(|t| t.1.bytes.len() as u64).sum();
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        write(&name, shard)?;
        for (key, _) in shard.iter().map(|t| (&t.0, ())) {
            weight_map.insert(key.clone(), Value::String(name.clone()));
        }
    }
    let mut sorted: Vec<_> = weight_map.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let index = serde_json::json!({
        "metadata": {"total_size": total},
        "weight_map": serde_json::Map::from_iter(sorted),
    });
    let path = folder.join(INDEX_FILE);
    let text = serde_json::to_string_pretty(&index).map_err(|source| Error::Json { path: path.clone(), source })?;
    crate::write_atomic(&path, text + "\n").map_err(|source| Error::Io { path, source })
}

/// A named f32 tensor as host data: `(name, shape, values)`.
pub type HostTensor = (String, Vec<usize>, Vec<f32>);

/// Writes f32 tensors (optimizer moments, for instance) to one safetensors file, bit-exact.
///
/// # Errors
/// [`Error::Safetensors`] naming the file.
pub fn save_tensor_file(path: &Path, tensors: &[HostTensor]) -> Result<()> {
    let owned: Vec<(String, OwnedTensor)> = tensors
        .iter()
        .map(|(name, shape, values)| (name.clone(), OwnedTensor::new(values, shape.clone(), StorageDType::F32)))
        .collect();
    let fail = |reason: String| Error::Safetensors { path: path.into(), reason };
    crate::write_atomic_with(path, |tmp| {
        safetensors::serialize_to_file(owned.iter().map(|(k, t)| (k.as_str(), t)), None, tmp)
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
    .map_err(|e| fail(e.to_string()))
}

/// Reads every tensor of a safetensors file written by [`save_tensor_file`] (f32 only), in name
/// order.
///
/// # Errors
/// I/O errors and [`Error::Safetensors`] naming the file (also for a non-f32 tensor).
pub fn load_tensor_file(path: &Path) -> Result<Vec<HostTensor>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })?;
    let bad = |reason: String| Error::Safetensors { path: path.into(), reason };
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut names: Vec<String> = file.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let view = file.tensor(&name).map_err(|e| bad(e.to_string()))?;
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!("tensor {name}: expected F32, found {:?}", view.dtype())));
            }
            let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            Ok((name, view.shape().to_vec(), values))
        })
        .collect()
}
