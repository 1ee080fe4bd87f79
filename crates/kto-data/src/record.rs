//! Dataset records: reading JSONL into typed examples with errors that name the line and field.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::tokenizer::Message;

/// A prompt or completion: plain text (standard format) or messages (conversational format).
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Standard format.
    Text(String),
    /// Conversational format.
    Messages(Vec<Message>),
}

/// One unpaired example as read (before tokenization).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The prompt.
    pub prompt: Content,
    /// The completion.
    pub completion: Content,
    /// `true` for desirable.
    pub label: bool,
    /// 0-based index of the source record (line order for JSONL).
    pub source_row: usize,
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

/// Reads a JSONL dataset into unpaired examples in TRL 1.16's order (paired data unpaired with
/// [`kto_core::unpair`]).
///
/// # Errors
/// `path:line: field "name": reason` for malformed lines, missing fields, wrong types, bad labels,
/// empty completions and records of another shape than the first; an error for an empty file.
pub fn read_jsonl(path: &Path) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| Error::Record {
            path: path.into(),
            line: i + 1,
            field: None,
            reason: format!("invalid JSON: {e}"),
        })?;
        records.push((i + 1, value));
    }
    from_values(path, records)
}

fn field_err(path: &Path, line: usize, field: &str, reason: impl Into<String>) -> Error {
    Error::Record { path: path.into(), line, field: Some(field.into()), reason: reason.into() }
}

/// Short JSON rendering of a found value for error messages.
fn found(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s }
}

fn parse_content(path: &Path, line: usize, field: &str, v: Option<&Value>, conversational: bool) -> Result<Content> {
    let v = v.ok_or_else(|| field_err(path, line, field, "missing"))?;
    if conversational {
        let items = v
            .as_array()
            .ok_or_else(|| field_err(path, line, field, format!("expected a list of messages, found {}", found(v))))?;
        let mut messages = Vec::with_capacity(items.len());
        for (k, item) in items.iter().enumerate() {
            let role = item.get("role").and_then(Value::as_str);
            let content = item.get("content").and_then(Value::as_str);
            match (role, content) {
                (Some(role), Some(content)) => {
                    if !["system", "user", "assistant", "tool"].contains(&role) {
                        return Err(field_err(path, line, field, format!("message {k}: unknown role \"{role}\"")));
                    }
                    messages.push(Message { role: role.into(), content: content.into() })
                }
                _ => {
                    return Err(field_err(
                        path,
                        line,
                        field,
                        format!(
                            "message {k}: expected {{\"role\": string, \"content\": string}}, found {}",
                            found(item)
                        ),
                    ));
                }
            }
        }
        Ok(Content::Messages(messages))
    } else {
        match v {
            Value::String(s) => Ok(Content::Text(s.clone())),
            other => Err(field_err(path, line, field, format!("expected a string, found {}", found(other)))),
        }
    }
}

/// TRL's conversational test: a list whose first element is an object with a `role`.
fn is_conversational(v: Option<&Value>) -> bool {
    v.and_then(Value::as_array).and_then(|a| a.first()).is_some_and(|m| m.get("role").is_some())
}

fn parse_label(path: &Path, line: usize, v: Option<&Value>) -> Result<bool> {
    match v {
        None => Err(field_err(path, line, "label", "missing")),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(false),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(true),
        Some(other) => {
            Err(field_err(path, line, "label", format!("expected a boolean (or 0/1), found {}", found(other))))
        }
    }
}

/// Types records given as `(line, value)` pairs.
///
/// # Errors
/// As [`read_jsonl`].
pub fn from_values(path: &Path, records: Vec<(usize, Value)>) -> Result<Vec<Example>> {
    let Some((first_line, first)) = records.first() else {
        return Err(Error::EmptyDataset { path: path.into() });
    };
    let shape = shape_of(path, *first_line, first)?;
    let conversational = is_conversational(first.get("prompt"))
        || is_conversational(first.get("completion"))
        || is_conversational(first.get("chosen"));
    let mut unpaired = Vec::new();
    let mut paired = Vec::new();
    for (row, (line, value)) in records.iter().enumerate() {
        let line = *line;
        if !value.is_object() {
            return Err(Error::Record {
                path: path.into(),
                line,
                field: None,
                reason: format!("expected a JSON object, found {}", found(value)),
            });
        }
        let this_shape = shape_of(path, line, value)?;
        if this_shape != shape {
            return Err(Error::Record {
                path: path.into(),
                line,
                field: None,
                reason: format!(
                    "record is {this_shape:?} but line {first_line} is {shape:?}; a dataset must use one format"
                ),
            });
        }
        for key in ["prompt", "completion", "chosen", "rejected"] {
            if let Some(v) = value.get(key)
                && is_conversational(Some(v)) != conversational
                && !(v.as_array().is_some_and(|a| a.is_empty()))
            {
                let kind = if conversational { "conversational" } else { "standard" };
                return Err(field_err(path, line, key, format!("mixes formats: line {first_line} is {kind}")));
            }
        }
        match shape {
            RecordShape::Unpaired => {
                let completion = parse_content(path, line, "completion", value.get("completion"), conversational)?;
                let empty = match &completion {
                    Content::Text(s) => s.is_empty(),
                    Content::Messages(m) => m.is_empty(),
                };
                if empty {
                    return Err(field_err(path, line, "completion", "is empty"));
                }
                unpaired.push(Example {
                    prompt: parse_content(path, line, "prompt", value.get("prompt"), conversational)?,
                    completion,
                    label: parse_label(path, line, value.get("label"))?,
                    source_row: row,
                });
            }
            RecordShape::PairedExplicit | RecordShape::PairedImplicit => {
                let prompt = match shape {
                    RecordShape::PairedExplicit => {
                        Some(parse_content(path, line, "prompt", value.get("prompt"), conversational)?)
                    }
                    _ => None,
                };
                paired.push(kto_core::PairedExample {
                    prompt,
                    chosen: parse_content(path, line, "chosen", value.get("chosen"), conversational)?,
                    rejected: parse_content(path, line, "rejected", value.get("rejected"), conversational)?,
                    extra: row,
                });
            }
        }
    }
    if shape == RecordShape::Unpaired {
        return Ok(unpaired);
    }
    let lines: Vec<usize> = records.iter().map(|(line, _)| *line).collect();
    if conversational {
        let typed = paired.into_iter().map(|p| kto_core::PairedExample {
            prompt: p.prompt.map(into_messages),
            chosen: into_messages(p.chosen),
            rejected: into_messages(p.rejected),
            extra: p.extra,
        });
        unpair_typed(path, &lines, typed.collect(), Content::Messages)
    } else {
        let typed = paired.into_iter().map(|p| kto_core::PairedExample {
            prompt: p.prompt.map(into_text),
            chosen: into_text(p.chosen),
            rejected: into_text(p.rejected),
            extra: p.extra,
        });
        unpair_typed(path, &lines, typed.collect(), Content::Text)
    }
}

fn into_messages(c: Content) -> Vec<Message> {
    match c {
        Content::Messages(m) => m,
        Content::Text(_) => unreachable!("invariant: conversational records parse to messages"),
    }
}

fn into_text(c: Content) -> String {
    match c {
        Content::Text(s) => s,
        Content::Messages(_) => unreachable!("invariant: standard records parse to text"),
    }
}

fn unpair_typed<C: kto_core::PromptContent + Clone>(
    path: &Path,
    lines: &[usize],
    paired: Vec<kto_core::PairedExample<C, usize>>,
    wrap: fn(C) -> Content,
) -> Result<Vec<Example>> {
    let out = kto_core::unpair(paired, kto_core::TRL_UNPAIR_BLOCK).map_err(|e| match e {
        kto_core::Error::EmptyPairedField { row, field } => {
            field_err(path, lines[row], field, "is empty, cannot extract an implicit prompt")
        }
        other => Error::Record { path: path.into(), line: 0, field: None, reason: other.to_string() },
    })?;
    Ok(out
        .into_iter()
        .map(|u| Example {
            prompt: wrap(u.prompt),
            completion: wrap(u.completion),
            label: u.label,
            source_row: u.extra,
        })
        .collect())
}

fn shape_of(path: &Path, line: usize, v: &Value) -> Result<RecordShape> {
    let has = |k: &str| v.get(k).is_some();
    if has("chosen") || has("rejected") {
        for k in ["chosen", "rejected"] {
            if !has(k) {
                return Err(field_err(path, line, k, "missing"));
            }
        }
        return Ok(if has("prompt") { RecordShape::PairedExplicit } else { RecordShape::PairedImplicit });
    }
    Ok(RecordShape::Unpaired)
}
