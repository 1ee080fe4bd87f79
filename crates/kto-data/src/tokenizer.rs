//! A Hugging Face tokenizer folder: `tokenizer.json`, the special tokens of
//! `tokenizer_config.json`, and the chat template (`chat_template` there, or
//! `chat_template.jinja` as transformers 5 writes it).

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
    /// Other keys of the message (`tool_calls`, `name`, `tool_call_id`, ...), passed to the chat
    /// template as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Message {
    /// A message with a role and text only.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), extra: serde_json::Map::new() }
    }
}

/// Extra inputs of a chat template beyond the messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct TemplateInputs<'a> {
    /// The `tools` variable (a list of tool schemas).
    pub tools: Option<&'a Value>,
    /// Further variables (`chat_template_kwargs`), e.g. `enable_thinking`.
    pub kwargs: Option<&'a serde_json::Map<String, Value>>,
}

/// A tokenizer with its special tokens and chat template.
pub struct HfTokenizer {
    folder: PathBuf,
    inner: tokenizers::Tokenizer,
    /// `bos_token` text, if any.
    pub bos_token: Option<String>,
    /// `eos_token` text, if any.
    pub eos_token: Option<String>,
    /// `pad_token` text; TRL falls back to the EOS token when it is unset.
    pub pad_token: Option<String>,
    /// The chat template compiled once, when the folder has one.
    chat_env: Option<minijinja::Environment<'static>>,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer").field("folder", &self.folder).field("eos_token", &self.eos_token).finish()
    }
}

/// A special token in `tokenizer_config.json` is a string or `{"content": ...}`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl HfTokenizer {
    /// Loads `folder/tokenizer.json` and, when present, `tokenizer_config.json` and
    /// `chat_template.jinja`.
    ///
    /// # Errors
    /// I/O and JSON errors naming the file; [`Error::Tokenizer`] when `tokenizer.json` does not
    /// load.
    pub fn from_folder(folder: &Path) -> Result<Self> {
        let path = folder.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer { path: path.clone(), message: e.to_string() })?;
        let config_path = folder.join("tokenizer_config.json");
        let config: Value = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .map_err(|source| Error::Io { path: config_path.clone(), source })?;
            serde_json::from_str(&text).map_err(|source| Error::Json { path: config_path.clone(), source })?
        } else {
            Value::Null
        };
        let jinja = folder.join("chat_template.jinja");
        let chat_template = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja).map_err(|source| Error::Io { path: jinja.clone(), source })?)
        } else {
            config.get("chat_template").and_then(Value::as_str).map(str::to_string)
        };
        let chat_env = match chat_template {
            Some(source) => Some(
                template_env(source)
                    .map_err(|e| Error::Template { path: folder.into(), message: format!("does not compile: {e}") })?,
            ),
            None => None,
        };
        Ok(Self {
            folder: folder.into(),
            inner,
            bos_token: token_text(config.get("bos_token")),
            eos_token: token_text(config.get("eos_token")),
            pad_token: token_text(config.get("pad_token")),
            chat_env,
        })
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (e.g.
    /// Llama 3's BOS), as transformers' default call does.
    ///
    /// # Errors
    /// [`Error::Tokenizer`].
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer { path: self.folder.clone(), message: e.to_string() })
    }

    /// Text of `ids`.
    ///
    /// # Errors
    /// [`Error::Tokenizer`].
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer { path: self.folder.clone(), message: e.to_string() })
    }

    /// The id of a token text (special tokens included).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// EOS id, if the tokenizer names an EOS token.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_id(t))
    }

    /// Pad id with TRL's fallback: the pad token, else the EOS token.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_token.as_deref().and_then(|t| self.token_id(t)).or_else(|| self.eos_id())
    }

    /// Renders the chat template as transformers' `apply_chat_template(tokenize=False)` does:
    /// Jinja with `trim_blocks` and `lstrip_blocks`, Python string methods, `raise_exception`,
    /// and the special tokens as variables.
    ///
    /// # Errors
    /// [`Error::NoChatTemplate`], and [`Error::Template`] when the template does not render.
    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_chat(messages, add_generation_prompt, TemplateInputs::default())
    }

    /// [`Self::apply_chat_template`] with `tools` and extra template variables
    /// (`chat_template_kwargs`), which override the defaults of the same name.
    ///
    /// # Errors
    /// As [`Self::apply_chat_template`].
    pub fn render_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        inputs: TemplateInputs<'_>,
    ) -> Result<String> {
        let env = self.chat_env.as_ref().ok_or_else(|| Error::NoChatTemplate { path: self.folder.clone() })?;
        let mut vars = serde_json::Map::new();
        // As transformers passes its special tokens map: only the tokens the tokenizer has (a
        // template concatenating an absent `bos_token` fails there as here).
        for (name, token) in
            [("bos_token", &self.bos_token), ("eos_token", &self.eos_token), ("pad_token", &self.pad_token)]
        {
            if let Some(token) = token {
                vars.insert(name.into(), token.clone().into());
            }
        }
        if let Some(kwargs) = inputs.kwargs {
            vars.extend(kwargs.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let messages = serde_json::to_value(messages).expect("messages serialize");
        vars.insert("messages".into(), messages);
        vars.insert("add_generation_prompt".into(), add_generation_prompt.into());
        // transformers always passes `tools` and `documents`, as None when not given: a template
        // testing `tools is not none` sees no tools (an undefined variable is not none).
        vars.insert("tools".into(), inputs.tools.cloned().unwrap_or(Value::Null));
        vars.insert("documents".into(), Value::Null);
        let ctx = minijinja::Value::from_serialize(&vars);
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(|e| Error::Template { path: self.folder.clone(), message: describe_template_error(&e) })
    }
}

/// A Jinja environment set up as transformers sets up its chat templates, holding `source` as
/// the template `chat`.
fn template_env(source: String) -> std::result::Result<minijinja::Environment<'static>, minijinja::Error> {
    let source = without_generation_blocks(&source);
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
    });
    env.add_filter("tojson", tojson);
    env.add_filter("length", length);
    env.add_filter("count", length);
    env.add_test("iterable", iterable);
    env.add_function("strftime_now", strftime_now);
    env.add_template_owned("chat", source)?;
    Ok(env)
}

/// transformers' `{% generation %}...{% endgeneration %}` extension marks the assistant tokens
/// and renders its body: each tag becomes an always-true `if` with the same whitespace control,
/// so the body renders exactly as there.
fn without_generation_blocks(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else { break };
        let tag = &rest[start..start + len + 2];
        let inner = &tag[2..tag.len() - 2];
        let (open, close) = (inner.starts_with('-'), inner.ends_with('-'));
        let word = inner.trim_matches('-').trim();
        let replacement = match word {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        out.push_str(&rest[..start]);
        match replacement {
            Some(word) => {
                out.push_str(if open { "{%- " } else { "{% " });
                out.push_str(word);
                out.push_str(if close { " -%}" } else { " %}" });
            }
            None => out.push_str(tag),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// jinja2's `length` (and `count`): `len(value)`, where an undefined value has length 0 (many
/// Hub templates take `|length` of variables they were not given).
fn length(value: minijinja::Value) -> std::result::Result<usize, minijinja::Error> {
    if value.is_undefined() {
        return Ok(0);
    }
    value.len().ok_or_else(|| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("cannot calculate length of value of type {}", value.kind()),
        )
    })
}

/// jinja2's `iterable` test: whether `iter(value)` works. `none` is not iterable (minijinja
/// iterates it as empty); an undefined value is (jinja2's `Undefined` iterates as empty).
fn iterable(value: minijinja::Value) -> bool {
    if value.is_undefined() {
        return true;
    }
    !value.is_none() && value.try_iter().is_ok()
}

/// transformers' `tojson` filter: `json.dumps` with `ensure_ascii=False`, optional `indent`, and
/// without HTML escaping (minijinja's built-in escapes `<`, `>`, `&` and `'`).
fn tojson(value: minijinja::Value, kwargs: minijinja::value::Kwargs) -> std::result::Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(py_json_dumps(&json, indent, 0))
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)` (separators `", "` and `": "`
/// without indent).
fn py_json_dumps(v: &Value, indent: Option<usize>, depth: usize) -> String {
    let newline = |d: usize| indent.map(|n| format!("\n{}", " ".repeat(n * d))).unwrap_or_default();
    match v {
        Value::Array(items) if !items.is_empty() => {
            let sep = if indent.is_some() { "," } else { ", " };
            let inner: Vec<String> = items
                .iter()
                .map(|x| format!("{}{}", newline(depth + 1), py_json_dumps(x, indent, depth + 1)))
                .collect();
            format!("[{}{}]", inner.join(sep), newline(depth))
        }
        Value::Object(map) if !map.is_empty() => {
            let sep = if indent.is_some() { "," } else { ", " };
            let inner: Vec<String> = map
                .iter()
                .map(|(k, x)| {
                    format!(
                        "{}{}: {}",
                        newline(depth + 1),
                        Value::String(k.clone()),
                        py_json_dumps(x, indent, depth + 1)
                    )
                })
                .collect();
            format!("{{{}{}}}", inner.join(sep), newline(depth))
        }
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or_default();
            kto_core::py_float_repr(f)
        }
        other => other.to_string(),
    }
}

/// transformers' `strftime_now(format)`: the current UTC time formatted with the common
/// `strftime` directives (`%d %m %Y %y %b %B %a %A %H %M %S %j %%`).
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(strftime(&format, secs))
}

fn strftime(format: &str, unix_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let day_of_year = cumulative[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = ((days + 3) % 7) as usize; // 1970-01-01 was a Thursday.
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('H') => out.push_str(&format!("{:02}", secs_of_day / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs_of_day / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs_of_day % 60)),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// minijinja's error with its template line, and the message alone for `raise_exception`.
fn describe_template_error(e: &minijinja::Error) -> String {
    match e.kind() {
        minijinja::ErrorKind::InvalidOperation if e.detail().is_some() && e.line().is_some() => {
            format!("{} (template line {})", e.detail().unwrap_or_default(), e.line().unwrap_or_default())
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kto_testkit::fixture;

    #[test]
    fn strftime_matches_python() {
        // datetime.fromtimestamp(1795996800, timezone.utc) is Monday 2026-11-30 00:00:00.
        assert_eq!(strftime("%d %b %Y", 1_795_996_800), "30 Nov 2026");
        assert_eq!(
            strftime("%A %B %j %H:%M:%S %y %m %%", 1_795_996_800 + 3_723),
            "Monday November 334 01:02:03 26 11 %"
        );
        // 2024-02-29 (leap day), 1709164800.
        assert_eq!(strftime("%Y-%m-%d %a %j", 1_709_164_800), "2024-02-29 Thu 060");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let v = serde_json::json!({"name": "get_time", "n": 1.5, "ok": true, "l": [1, "é"], "e": {}});
        assert_eq!(py_json_dumps(&v, None, 0), r#"{"name": "get_time", "n": 1.5, "ok": true, "l": [1, "é"], "e": {}}"#);
        assert_eq!(py_json_dumps(&serde_json::json!({"a": [1]}), Some(2), 0), "{\n  \"a\": [\n    1\n  ]\n}");
    }

    #[test]
    fn qwen_chat_template_adds_the_default_system_prompt() {
        let tok = HfTokenizer::from_folder(&fixture("models/tiny-qwen2")).expect("loads");
        let text = tok.apply_chat_template(&[Message::new("user", "Hi")], true).expect("renders");
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(tok.eos_id(), Some(999));
        assert_eq!(tok.pad_id(), Some(997));
    }

    #[test]
    fn llama_tokenizer_adds_bos_and_pads_with_eos() {
        let tok = HfTokenizer::from_folder(&fixture("models/tiny-llama")).expect("loads");
        let ids = tok.encode("Hello", true).expect("encodes");
        assert_eq!(ids[0], 893, "<|begin_of_text|>");
        assert_eq!(tok.pad_id(), Some(899), "no pad token: EOS <|eot_id|>");
        let text = tok.apply_chat_template(&[Message::new("user", " Hi ")], true).expect("renders");
        assert_eq!(
            text,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }
}
