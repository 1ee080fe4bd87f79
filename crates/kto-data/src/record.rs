//! Typing raw records into unpaired examples, with errors that name the file, line or row, and
//! field; paired data is unpaired on the way with TRL 1.16's order.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::reader::{Location, RawRecord, records};
use crate::source::{DataFile, FileFormat, resolve_dataset};
use crate::tokenizer::Message;

/// A prompt or completion: plain text (standard format) or messages (conversational format).
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Standard format.
    Text(String),
    /// Conversational format.
    Messages(Vec<Message>),
    /// Pre-tokenized (`prompt_ids` / `completion_ids` columns): used as given, no EOS added.
    Tokens(Vec<u32>),
}

impl Content {
    fn is_empty(&self) -> bool {
        match self {
            Content::Text(s) => s.is_empty(),
            Content::Messages(m) => m.is_empty(),
            Content::Tokens(t) => t.is_empty(),
        }
    }
}

/// Columns TRL reads; every other column is carried in [`Example::extra`].
const KNOWN_COLUMNS: &[&str] = &[
    "prompt",
    "completion",
    "label",
    "chosen",
    "rejected",
    "tools",
    "chat_template_kwargs",
    "ref_logps",
    "ref_KL_logps",
    "reference_logps",
    "reference_KL_logps",
];

/// Roles a message may have.
const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

/// One unpaired example as read (before tokenization).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The prompt.
    pub prompt: Content,
    /// The completion.
    pub completion: Content,
    /// `true` for desirable.
    pub label: bool,
    /// 0-based index of the source record in the dataset (all files, in order).
    pub source_row: usize,
    /// The file and line or row of the source record.
    pub at: Location,
    /// The `tools` column (a list; a JSON string is parsed as TRL does), passed to the chat
    /// template.
    pub tools: Option<Value>,
    /// The `chat_template_kwargs` column: extra variables for the chat template.
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// Precomputed reference log-probabilities (`ref_logps` column).
    pub ref_logps: Option<f64>,
    /// Precomputed reference log-probabilities of the KL pair (`ref_KL_logps` column).
    pub ref_kl_logps: Option<f64>,
    /// Other columns, carried through (duplicated to both halves of a pair, as TRL does).
    pub extra: Map<String, Value>,
}

/// Which record shape a dataset uses (decided by its first record, as TRL does, and then
/// required of every record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordShape {
    /// `prompt`, `completion`, `label`.
    Unpaired,
    /// `prompt`, `chosen`, `rejected`.
    PairedExplicit,
    /// `chosen`, `rejected`.
    PairedImplicit,
}

/// A dataset read into unpaired examples.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The examples in TRL's order.
    pub examples: Vec<Example>,
    /// The record shape of the source.
    pub shape: RecordShape,
    /// Conversational (message lists) rather than standard (text).
    pub conversational: bool,
    /// The data files read.
    pub files: Vec<PathBuf>,
}

impl Dataset {
    /// Desirable and undesirable counts.
    pub fn label_counts(&self) -> (usize, usize) {
        let desirable = self.examples.iter().filter(|e| e.label).count();
        (desirable, self.examples.len() - desirable)
    }
}

/// Finds a dataset (file, Hugging Face repo folder, or hub id in the local cache; see
/// [`resolve_dataset`]) and reads `split` of it.
///
/// # Errors
/// As [`resolve_dataset`] and [`read_dataset`].
pub fn load_dataset(spec: &str, split: &str) -> Result<Dataset> {
    read_dataset(&resolve_dataset(spec, split)?)
}

/// Reads a JSONL file into unpaired examples (see [`read_dataset`]).
///
/// # Errors
/// As [`read_dataset`].
pub fn read_jsonl(path: &Path) -> Result<Vec<Example>> {
    Ok(read_dataset(&[DataFile { path: path.into(), format: FileFormat::Jsonl }])?.examples)
}

/// Reads data files into unpaired examples in TRL 1.16's order, streaming: records are typed one
/// at a time, and paired records are unpaired in TRL's blocks of 1000 (through
/// [`kto_core::unpair`]).
///
/// The first record fixes the shape (unpaired, explicit or implicit pairs) and the format
/// (standard or conversational); every other record must use the same.
///
/// # Errors
/// `path:line: field "name": reason` (`path: row N: ...` for Parquet and JSON arrays) for
/// malformed lines, missing fields, wrong types, bad labels, empty completions, malformed
/// message lists and unknown roles, and records of another shape or format than the first;
/// [`Error::EmptyDataset`] when there are no records.
pub fn read_dataset(files: &[DataFile]) -> Result<Dataset> {
    let mut iter = records(files);
    let Some(first) = iter.next().transpose()? else {
        return Err(Error::EmptyDataset { path: crate::reader::describe(files) });
    };
    let shape = shape_of(&first)?;
    let conversational =
        ["prompt", "completion", "chosen", "rejected"].iter().any(|k| is_conversational(first.value.get(k)));
    let tokenized = first.value.get("completion_ids").is_some();
    if tokenized && shape != RecordShape::Unpaired {
        return Err(field_err(
            &first.at,
            "completion_ids",
            "pre-tokenized rows must be unpaired (prompt_ids, completion_ids, label)",
        ));
    }
    let typer = Typer { first_at: first.at.clone(), shape, conversational, tokenized };
    let mut examples = Vec::new();
    let mut block = Vec::new();
    for (row, record) in std::iter::once(Ok(first)).chain(iter).enumerate() {
        let record = record?;
        match typer.type_record(record, row)? {
            Typed::Unpaired(e) => examples.push(*e),
            Typed::Paired(p) => {
                block.push(*p);
                if block.len() == kto_core::TRL_UNPAIR_BLOCK {
                    examples.extend(unpair_block(std::mem::take(&mut block), conversational)?);
                }
            }
        }
    }
    if !block.is_empty() {
        examples.extend(unpair_block(block, conversational)?);
    }
    Ok(Dataset { examples, shape, conversational, files: files.iter().map(|f| f.path.clone()).collect() })
}

/// Everything of a record but its prompt and completion (duplicated to both halves of a pair).
#[derive(Debug, Clone)]
struct RowMeta {
    source_row: usize,
    at: Location,
    tools: Option<Value>,
    chat_template_kwargs: Option<Map<String, Value>>,
    ref_logps: Option<f64>,
    ref_kl_logps: Option<f64>,
    extra: Map<String, Value>,
}

impl RowMeta {
    fn into_example(self, prompt: Content, completion: Content, label: bool) -> Example {
        Example {
            prompt,
            completion,
            label,
            source_row: self.source_row,
            at: self.at,
            tools: self.tools,
            chat_template_kwargs: self.chat_template_kwargs,
            ref_logps: self.ref_logps,
            ref_kl_logps: self.ref_kl_logps,
            extra: self.extra,
        }
    }
}

enum Typed {
    Unpaired(Box<Example>),
    Paired(Box<kto_core::PairedExample<Content, RowMeta>>),
}

struct Typer {
    first_at: Location,
    shape: RecordShape,
    conversational: bool,
    /// Rows carry `prompt_ids` and `completion_ids` instead of text.
    tokenized: bool,
}

fn field_err(at: &Location, field: &str, reason: impl Into<String>) -> Error {
    Error::Record { at: at.clone(), field: Some(field.into()), reason: reason.into() }
}

/// Short JSON rendering of a found value for error messages.
fn found(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s }
}

/// TRL's conversational test: a list whose first element is an object with a `role`.
fn is_conversational(v: Option<&Value>) -> bool {
    v.and_then(Value::as_array).and_then(|a| a.first()).is_some_and(|m| m.get("role").is_some())
}

fn shape_of(record: &RawRecord) -> Result<RecordShape> {
    let v = &record.value;
    if !v.is_object() {
        return Err(Error::Record {
            at: record.at.clone(),
            field: None,
            reason: format!("expected a JSON object, found {}", found(v)),
        });
    }
    for key in ["image", "images"] {
        if v.get(key).is_some() {
            return Err(field_err(&record.at, key, "vision datasets are not supported (text-only models)"));
        }
    }
    let has = |k: &str| v.get(k).is_some();
    if has("chosen") || has("rejected") {
        for k in ["chosen", "rejected"] {
            if !has(k) {
                return Err(field_err(&record.at, k, "missing"));
            }
        }
        return Ok(if has("prompt") { RecordShape::PairedExplicit } else { RecordShape::PairedImplicit });
    }
    Ok(RecordShape::Unpaired)
}

impl Typer {
    fn type_record(&self, record: RawRecord, source_row: usize) -> Result<Typed> {
        let at = &record.at;
        let this_shape = shape_of(&record)?;
        if this_shape != self.shape {
            return Err(Error::Record {
                at: at.clone(),
                field: None,
                reason: format!(
                    "record is {this_shape:?} but {} is {:?}; a dataset must use one format",
                    self.first_at.seen_from(at),
                    self.shape
                ),
            });
        }
        let Value::Object(mut object) = record.value else { unreachable!("shape_of checked it is an object") };
        for key in ["prompt", "completion", "chosen", "rejected"] {
            if let Some(v) = object.get(key)
                && is_conversational(Some(v)) != self.conversational
                && !v.as_array().is_some_and(|a| a.is_empty())
            {
                let kind = if self.conversational { "conversational" } else { "standard" };
                return Err(field_err(at, key, format!("mixes formats: {} is {kind}", self.first_at.seen_from(at))));
            }
        }
        let content = |field: &str| {
            if self.tokenized {
                let ids = format!("{field}_ids");
                return parse_ids(at, &ids, object.get(&ids)).map(Content::Tokens);
            }
            self.content(at, field, object.get(field))
        };
        let prompt = match self.shape {
            RecordShape::PairedImplicit => None,
            _ => Some(content("prompt")?),
        };
        let typed_rest = match self.shape {
            RecordShape::Unpaired => {
                let completion = content("completion")?;
                if completion.is_empty() {
                    return Err(field_err(at, "completion", "is empty"));
                }
                Some((completion, parse_label(at, object.get("label"))?))
            }
            _ => None,
        };
        let pair = match self.shape {
            RecordShape::Unpaired => None,
            _ => Some((content("chosen")?, content("rejected")?)),
        };
        let meta = RowMeta {
            source_row,
            at: at.clone(),
            tools: parse_tools(at, object.remove("tools"))?,
            chat_template_kwargs: match object.remove("chat_template_kwargs") {
                None | Some(Value::Null) => None,
                Some(Value::Object(m)) => Some(m),
                Some(other) => {
                    return Err(field_err(
                        at,
                        "chat_template_kwargs",
                        format!("expected an object, found {}", found(&other)),
                    ));
                }
            },
            ref_logps: reference_column(at, &object, "ref_logps", "reference_logps")?,
            ref_kl_logps: reference_column(at, &object, "ref_KL_logps", "reference_KL_logps")?,
            extra: object.into_iter().filter(|(k, _)| !KNOWN_COLUMNS.contains(&k.as_str())).collect(),
        };
        Ok(match (typed_rest, pair) {
            (Some((completion, label)), _) => Typed::Unpaired(Box::new(meta.into_example(
                prompt.expect("unpaired records have a prompt"),
                completion,
                label,
            ))),
            (None, Some((chosen, rejected))) => {
                Typed::Paired(Box::new(kto_core::PairedExample { prompt, chosen, rejected, extra: meta }))
            }
            (None, None) => unreachable!("every shape is unpaired or paired"),
        })
    }

    fn content(&self, at: &Location, field: &str, v: Option<&Value>) -> Result<Content> {
        let v = v.ok_or_else(|| field_err(at, field, "missing"))?;
        if !self.conversational {
            return match v {
                Value::String(s) => Ok(Content::Text(s.clone())),
                other => Err(field_err(at, field, format!("expected a string, found {}", found(other)))),
            };
        }
        let items = v
            .as_array()
            .ok_or_else(|| field_err(at, field, format!("expected a list of messages, found {}", found(v))))?;
        let mut messages = Vec::with_capacity(items.len());
        for (k, item) in items.iter().enumerate() {
            let malformed = || {
                field_err(
                    at,
                    field,
                    format!("message {k}: expected {{\"role\": string, \"content\": string}}, found {}", found(item)),
                )
            };
            let Value::Object(map) = item else { return Err(malformed()) };
            let role = map.get("role").and_then(Value::as_str).ok_or_else(malformed)?;
            if !ROLES.contains(&role) {
                return Err(field_err(at, field, format!("message {k}: unknown role \"{role}\"")));
            }
            let content = match map.get("content") {
                Some(Value::String(s)) => s.clone(),
                // Assistant turns that only call tools may have no content.
                None | Some(Value::Null) if map.contains_key("tool_calls") => String::new(),
                _ => return Err(malformed()),
            };
            let extra =
                map.iter().filter(|(k, _)| *k != "role" && *k != "content").map(|(k, v)| (k.clone(), v.clone()));
            messages.push(Message { role: role.into(), content, extra: extra.collect() });
        }
        Ok(Content::Messages(messages))
    }
}

fn parse_ids(at: &Location, field: &str, v: Option<&Value>) -> Result<Vec<u32>> {
    let v = v.ok_or_else(|| field_err(at, field, "missing"))?;
    let items = v
        .as_array()
        .ok_or_else(|| field_err(at, field, format!("expected a list of token ids, found {}", found(v))))?;
    items
        .iter()
        .enumerate()
        .map(|(k, x)| {
            x.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| field_err(at, field, format!("item {k}: expected a token id, found {}", found(x))))
        })
        .collect()
}

fn parse_label(at: &Location, v: Option<&Value>) -> Result<bool> {
    match v {
        None => Err(field_err(at, "label", "missing")),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(false),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(true),
        Some(other) => Err(field_err(at, "label", format!("expected a boolean (or 0/1), found {}", found(other)))),
    }
}

fn parse_number(at: &Location, field: &str, v: Option<&Value>) -> Result<Option<f64>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(field_err(at, field, format!("expected a number, found {}", found(other)))),
    }
}

/// A reference log-prob column under TRL 1.16's name (`ref_logps`, what its precompute writes,
/// and kto's) or classic TRL's (`reference_logps`); a row with both is refused.
fn reference_column(at: &Location, object: &Map<String, Value>, name: &str, classic: &str) -> Result<Option<f64>> {
    match (parse_number(at, name, object.get(name))?, parse_number(at, classic, object.get(classic))?) {
        (Some(_), Some(_)) => Err(field_err(at, classic, format!("given together with `{name}`; keep one of the two"))),
        (a, b) => Ok(a.or(b)),
    }
}

/// `tools` is a list, or a JSON string holding one (TRL `json.loads` it).
fn parse_tools(at: &Location, v: Option<Value>) -> Result<Option<Value>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(list @ Value::Array(_)) => Ok(Some(list)),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
            Ok(list @ Value::Array(_)) => Ok(Some(list)),
            Ok(Value::Null) => Ok(None),
            Ok(other) => Err(field_err(at, "tools", format!("expected a list of tools, found {}", found(&other)))),
            Err(e) => Err(field_err(at, "tools", format!("invalid JSON in string: {e}"))),
        },
        Some(other) => Err(field_err(at, "tools", format!("expected a list of tools, found {}", found(&other)))),
    }
}

/// Unpairs one block of paired records (chosen rows, then rejected rows), extracting implicit
/// prompts; conversational and text contents go through [`kto_core::unpair`] with their own
/// comparison units.
fn unpair_block(block: Vec<kto_core::PairedExample<Content, RowMeta>>, conversational: bool) -> Result<Vec<Example>> {
    let ats: Vec<Location> = block.iter().map(|p| p.extra.at.clone()).collect();
    let map_err = |e: kto_core::Error| match e {
        kto_core::Error::EmptyPairedField { row, field } => {
            field_err(&ats[row], field, "is empty, cannot extract an implicit prompt")
        }
        kto_core::Error::MixedPromptPresence { row, .. } => {
            field_err(&ats[row], "prompt", "some records have a prompt and others do not")
        }
        other => Error::Record { at: ats[0].clone(), field: None, reason: other.to_string() },
    };
    if conversational {
        let typed = block.into_iter().map(|p| p.map_content(into_messages)).collect();
        let out = kto_core::unpair(typed, kto_core::TRL_UNPAIR_BLOCK).map_err(map_err)?;
        Ok(out
            .into_iter()
            .map(|u| u.extra.into_example(Content::Messages(u.prompt), Content::Messages(u.completion), u.label))
            .collect())
    } else {
        let typed = block.into_iter().map(|p| p.map_content(into_text)).collect();
        let out = kto_core::unpair(typed, kto_core::TRL_UNPAIR_BLOCK).map_err(map_err)?;
        Ok(out
            .into_iter()
            .map(|u| u.extra.into_example(Content::Text(u.prompt), Content::Text(u.completion), u.label))
            .collect())
    }
}

fn into_messages(c: Content) -> Vec<Message> {
    match c {
        Content::Messages(m) => m,
        Content::Text(_) | Content::Tokens(_) => unreachable!("invariant: conversational records parse to messages"),
    }
}

fn into_text(c: Content) -> String {
    match c {
        Content::Text(s) => s,
        Content::Messages(_) | Content::Tokens(_) => unreachable!("invariant: standard records parse to text"),
    }
}
