//! Where a dataset lives: a file, a folder laid out as a Hugging Face dataset repo, or a hub id
//! found in the local Hugging Face cache (offline).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How a data file is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// One JSON object per line (`.jsonl`, `.ndjson`, or a `.json` file that is not an array).
    Jsonl,
    /// One JSON array of objects (`.json`).
    JsonArray,
    /// Apache Parquet (`.parquet`), read one row group at a time.
    Parquet,
}

/// One file of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// The file.
    pub path: PathBuf,
    /// Its encoding.
    pub format: FileFormat,
}

impl DataFile {
    /// The file at `path`, its format chosen by extension (`.json` files are sniffed: an array, or
    /// JSON Lines as the `datasets` library also accepts).
    ///
    /// # Errors
    /// [`Error::Dataset`] for an unknown extension; I/O errors while sniffing.
    pub fn new(path: &Path) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
        let format = match ext.as_str() {
            "jsonl" | "ndjson" => FileFormat::Jsonl,
            "parquet" => FileFormat::Parquet,
            "json" => sniff_json(path)?,
            _ => {
                return Err(Error::Dataset {
                    spec: path.display().to_string(),
                    reason: "unknown file type (expected .jsonl, .json or .parquet)".into(),
                });
            }
        };
        Ok(Self { path: path.into(), format })
    }
}

/// A `.json` file is an array when its first non-blank byte is `[`.
fn sniff_json(path: &Path) -> Result<FileFormat> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.into(), source })?;
    let mut buf = [0u8; 4096];
    loop {
        let n = file.read(&mut buf).map_err(|source| Error::Io { path: path.into(), source })?;
        if n == 0 {
            return Ok(FileFormat::Jsonl);
        }
        if let Some(b) = buf[..n].iter().find(|b| !b.is_ascii_whitespace()) {
            return Ok(if *b == b'[' { FileFormat::JsonArray } else { FileFormat::Jsonl });
        }
    }
}

/// Split names the Hub recognises in file and folder names, with their synonyms.
const SPLIT_SYNONYMS: &[(&str, &[&str])] = &[
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "dev", "val"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];

fn split_words(split: &str) -> Vec<String> {
    SPLIT_SYNONYMS
        .iter()
        .find(|(name, words)| *name == split || words.contains(&split))
        .map(|(_, words)| words.iter().map(|w| w.to_string()).collect())
        .unwrap_or_else(|| vec![split.to_string()])
}

/// Resolves a dataset given as a file, a folder (a Hugging Face dataset repo layout) or a hub id
/// (`owner/name`, looked up in the local Hugging Face cache) to its data files for `split`.
///
/// In a folder, a file belongs to `split` when a word of its path relative to the folder (words
/// split at `/`, `-`, `_`, `.` and spaces) names the split or a synonym (`train`/`training`,
/// `validation`/`valid`/`dev`/`val`, `test`/`testing`/`eval`/`evaluation`), as the Hub's file
/// patterns do; when no file names any split, every data file is `train`. Files come sorted by
/// path, so `train-00000-of-00002.parquet` precedes `train-00001-of-00002.parquet`.
///
/// # Errors
/// [`Error::Dataset`] when nothing is found, with what was looked for.
pub fn resolve_dataset(spec: &str, split: &str) -> Result<Vec<DataFile>> {
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(vec![DataFile::new(path)?]);
    }
    if path.is_dir() {
        return files_in_folder(path, split, spec);
    }
    if looks_like_hub_id(spec) {
        let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        let cache = hub_cache_dir().ok_or_else(|| Error::Dataset {
            spec: spec.into(),
            reason: "not a file or folder, and no Hugging Face cache folder (set HF_HUB_CACHE or HF_HOME)".into(),
        })?;
        let snapshot = cached_snapshot(&cache, "datasets", repo, revision).map_err(|reason| Error::Dataset {
            spec: spec.into(),
            reason: format!("not a file or folder; as a hub id: {reason}"),
        })?;
        return files_in_folder(&snapshot, split, spec);
    }
    Err(Error::Dataset { spec: spec.into(), reason: "no such file or folder".into() })
}

fn looks_like_hub_id(spec: &str) -> bool {
    let repo = spec.split_once('@').map_or(spec, |(r, _)| r);
    let parts: Vec<&str> = repo.split('/').collect();
    (1..=2).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !p.starts_with('.')
        })
}

/// The Hugging Face hub cache folder: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("HF_HUB_CACHE")
        .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
}

/// The snapshot folder of `repo` (`owner/name`) at `revision` (a branch or tag name in `refs/`,
/// or a commit hash) in a hub cache laid out by `huggingface_hub`:
/// `<cache>/<kind>--owner--name/{refs/<revision>, snapshots/<commit>/}`.
///
/// # Errors
/// A sentence saying what is missing.
pub fn cached_snapshot(cache: &Path, kind: &str, repo: &str, revision: &str) -> Result<PathBuf, String> {
    let root = cache.join(format!("{kind}--{}", repo.replace('/', "--")));
    if !root.is_dir() {
        return Err(format!("{} is not in the Hugging Face cache ({} does not exist)", repo, root.display()));
    }
    let ref_file = root.join("refs").join(revision);
    let commit = if ref_file.is_file() {
        std::fs::read_to_string(&ref_file).map_err(|e| format!("{}: {e}", ref_file.display()))?.trim().to_string()
    } else {
        revision.to_string()
    };
    let snapshot = root.join("snapshots").join(&commit);
    if snapshot.is_dir() {
        Ok(snapshot)
    } else {
        Err(format!("revision \"{revision}\" of {repo} is not in the cache ({} does not exist)", snapshot.display()))
    }
}

fn files_in_folder(folder: &Path, split: &str, spec: &str) -> Result<Vec<DataFile>> {
    let mut all = Vec::new();
    collect_data_files(folder, &mut all)?;
    all.sort();
    if all.is_empty() {
        return Err(Error::Dataset {
            spec: spec.into(),
            reason: format!("no .jsonl, .json or .parquet files under {}", folder.display()),
        });
    }
    let words_of = |p: &Path| -> Vec<String> {
        p.strip_prefix(folder)
            .unwrap_or(p)
            .to_string_lossy()
            .split(['/', '\\', '-', '_', '.', ' '])
            .map(str::to_ascii_lowercase)
            .collect()
    };
    let wanted = split_words(split);
    let chosen: Vec<&PathBuf> = all.iter().filter(|p| words_of(p).iter().any(|w| wanted.contains(w))).collect();
    let chosen: Vec<&PathBuf> = if !chosen.is_empty() {
        chosen
    } else if split == "train" {
        let any_split = |p: &&PathBuf| {
            let words = words_of(p);
            SPLIT_SYNONYMS.iter().flat_map(|(_, w)| w.iter()).any(|s| words.iter().any(|w| w == s))
        };
        if all.iter().any(|p| any_split(&p)) { Vec::new() } else { all.iter().collect() }
    } else {
        Vec::new()
    };
    if chosen.is_empty() {
        let found: Vec<String> =
            all.iter().map(|p| p.strip_prefix(folder).unwrap_or(p).display().to_string()).take(8).collect();
        return Err(Error::Dataset {
            spec: spec.into(),
            reason: format!("no data files for split \"{split}\" (found: {})", found.join(", ")),
        });
    }
    chosen.into_iter().map(|p| DataFile::new(p)).collect()
}

fn collect_data_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.into(), source })?;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io { path: dir.into(), source })?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_data_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(),
            Some("jsonl" | "ndjson" | "json" | "parquet")
        ) && name != "dataset_infos.json"
            && name != "dataset_info.json"
            && name != "state.json"
        {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_told_apart_from_paths() {
        assert!(looks_like_hub_id("trl-lib/kto-mix-14k"));
        assert!(looks_like_hub_id("trl-lib/kto-mix-14k@v1.0"));
        assert!(looks_like_hub_id("imdb"));
        assert!(!looks_like_hub_id("./data/x.jsonl/y"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
    }

    #[test]
    fn split_synonyms() {
        assert_eq!(split_words("validation"), ["validation", "valid", "dev", "val"]);
        assert_eq!(split_words("dev"), ["validation", "valid", "dev", "val"]);
        assert_eq!(split_words("holdout"), ["holdout"]);
    }
}
