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
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
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
    chat_template: Option<String>,
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
        Ok(Self {
            folder: folder.into(),
            inner,
            bos_token: token_text(config.get("bos_token")),
            eos_token: token_text(config.get("eos_token")),
            pad_token: token_text(config.get("pad_token")),
            chat_template,
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
        let template =
            self.chat_template.as_deref().ok_or_else(|| Error::NoChatTemplate { path: self.folder.clone() })?;
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        let err = |e: minijinja::Error| Error::Template { path: self.folder.clone(), message: e.to_string() };
        env.add_template("chat", template).map_err(err)?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
            pad_token => self.pad_token.clone().unwrap_or_default(),
        };
        env.get_template("chat").and_then(|t| t.render(ctx)).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kto_testkit::fixture;

    #[test]
    fn qwen_chat_template_adds_the_default_system_prompt() {
        let tok = HfTokenizer::from_folder(&fixture("models/tiny-qwen2")).expect("loads");
        let text =
            tok.apply_chat_template(&[Message { role: "user".into(), content: "Hi".into() }], true).expect("renders");
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
        let text =
            tok.apply_chat_template(&[Message { role: "user".into(), content: " Hi ".into() }], true).expect("renders");
        assert_eq!(
            text,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }
}
