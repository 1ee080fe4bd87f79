//! Streams raw records (JSON values) out of data files, each with the place it came from: JSONL
//! line by line, Parquet one row group at a time, JSON arrays whole.

use std::collections::VecDeque;
use std::fmt;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::source::{DataFile, FileFormat};

/// Where a record came from: `data.jsonl:7` (1-based line) or `data.parquet: row 6` (0-based row,
/// as `dataset[6]` in Python).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub path: Arc<Path>,
    /// Line (1-based, JSONL) or row (0-based, Parquet and JSON arrays).
    pub index: usize,
    /// Whether `index` is a line or a row.
    pub unit: Unit,
}

/// See [`Location::unit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A 1-based line of a JSONL file.
    Line,
    /// A 0-based row of a Parquet file or JSON array.
    Row,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.unit {
            Unit::Line => write!(f, "{}:{}", self.path.display(), self.index),
            Unit::Row => write!(f, "{}: row {}", self.path.display(), self.index),
        }
    }
}

impl Location {
    /// `line 7` / `row 6` when `other` is in the same file, else the full location.
    pub fn seen_from(&self, other: &Location) -> String {
        match (self.path == other.path, self.unit) {
            (true, Unit::Line) => format!("line {}", self.index),
            (true, Unit::Row) => format!("row {}", self.index),
            (false, _) => self.to_string(),
        }
    }
}

/// One record as read, before typing.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    /// Where it came from.
    pub at: Location,
    /// The record (an object for valid data).
    pub value: Value,
}

/// The records of `files`, in order, read lazily.
pub fn records(files: &[DataFile]) -> impl Iterator<Item = Result<RawRecord>> + '_ {
    files.iter().flat_map(|f| -> Box<dyn Iterator<Item = Result<RawRecord>>> {
        match file_records(f) {
            Ok(iter) => iter,
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    })
}

fn file_records(file: &DataFile) -> Result<Box<dyn Iterator<Item = Result<RawRecord>>>> {
    let path: Arc<Path> = file.path.clone().into();
    let open = |p: &Path| std::fs::File::open(p).map_err(|source| Error::Io { path: p.into(), source });
    Ok(match file.format {
        FileFormat::Jsonl => Box::new(JsonlRecords {
            lines: std::io::BufReader::new(open(&path)?).lines(),
            line: 0,
            path,
            failed: false,
        }),
        FileFormat::JsonArray => {
            let text =
                std::fs::read_to_string(&path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
            let value: Value =
                serde_json::from_str(&text).map_err(|source| Error::Json { path: path.to_path_buf(), source })?;
            let Value::Array(items) = value else {
                return Err(Error::Dataset {
                    spec: path.display().to_string(),
                    reason: "expected a JSON array of records".into(),
                });
            };
            Box::new(items.into_iter().enumerate().map(move |(i, value)| {
                Ok(RawRecord { at: Location { path: path.clone(), index: i, unit: Unit::Row }, value })
            }))
        }
        FileFormat::Parquet => {
            let reader = SerializedFileReader::new(open(&path)?).map_err(|e| parquet_err(&path, e))?;
            Box::new(ParquetRecords { reader, path, group: 0, row: 0, buffer: VecDeque::new(), failed: false })
        }
    })
}

fn parquet_err(path: &Path, e: parquet::errors::ParquetError) -> Error {
    Error::Dataset { spec: path.display().to_string(), reason: format!("Parquet: {e}") }
}

struct JsonlRecords {
    lines: std::io::Lines<std::io::BufReader<std::fs::File>>,
    line: usize,
    path: Arc<Path>,
    failed: bool,
}

impl Iterator for JsonlRecords {
    type Item = Result<RawRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let text = match self.lines.next()? {
                Ok(t) => t,
                Err(source) => {
                    self.failed = true;
                    return Some(Err(Error::Io { path: self.path.to_path_buf(), source }));
                }
            };
            self.line += 1;
            if text.trim().is_empty() {
                continue;
            }
            let at = Location { path: self.path.clone(), index: self.line, unit: Unit::Line };
            return Some(match serde_json::from_str(&text) {
                Ok(value) => Ok(RawRecord { at, value }),
                Err(e) => {
                    self.failed = true;
                    Err(Error::Record { at, field: None, reason: format!("invalid JSON: {e}") })
                }
            });
        }
    }
}

struct ParquetRecords {
    reader: SerializedFileReader<std::fs::File>,
    path: Arc<Path>,
    group: usize,
    row: usize,
    buffer: VecDeque<Value>,
    failed: bool,
}

impl ParquetRecords {
    /// Decodes the next row group into `buffer`; `false` at the end.
    fn fill(&mut self) -> Result<bool> {
        while self.buffer.is_empty() {
            if self.group >= self.reader.num_row_groups() {
                return Ok(false);
            }
            let group = self.reader.get_row_group(self.group).map_err(|e| parquet_err(&self.path, e))?;
            let rows = RowIter::from_row_group(None, &*group).map_err(|e| parquet_err(&self.path, e))?;
            for row in rows {
                let row = row.map_err(|e| parquet_err(&self.path, e))?;
                self.buffer.push_back(row.to_json_value());
            }
            self.group += 1;
        }
        Ok(true)
    }
}

impl Iterator for ParquetRecords {
    type Item = Result<RawRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.fill() {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        }
        let value = self.buffer.pop_front()?;
        let at = Location { path: self.path.clone(), index: self.row, unit: Unit::Row };
        self.row += 1;
        Some(Ok(RawRecord { at, value }))
    }
}

/// The paths of `files`, for messages.
pub(crate) fn describe(files: &[DataFile]) -> PathBuf {
    match files {
        [one] => one.path.clone(),
        [first, ..] => first.path.parent().map_or_else(|| first.path.clone(), Path::to_path_buf),
        [] => PathBuf::new(),
    }
}
