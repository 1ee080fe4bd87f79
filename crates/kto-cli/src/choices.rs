//! Choice settings at the command line: a clap parser that lists a setting's values in `--help`
//! and answers a typo with them, for kto's choice enums, devices and LoRA targets alike.

use std::ffi::OsStr;
use std::marker::PhantomData;
use std::str::FromStr;

use clap::builder::{PossibleValue, TypedValueParser};
use clap::error::ErrorKind;

kto_core::choice! {
    /// transformers' `eval_strategy`.
    pub enum EvalStrategy("eval_strategy") {
        /// No evaluation.
        No = "no",
        /// Every `eval_steps` steps (default `logging_steps`) and at the last step.
        Steps = "steps",
        /// At the end of every epoch.
        Epoch = "epoch",
    }
}

kto_core::choice! {
    /// The dtype of the final model on disk (`--save-dtype`).
    pub enum SaveDType("save_dtype", default = Auto) {
        /// The source checkpoint's (its config's `torch_dtype`/`dtype`), as transformers saves;
        /// float32 when it records none.
        Auto = "auto",
        /// float32.
        Float32 = "float32",
        /// bfloat16.
        Bfloat16 = "bfloat16",
        /// float16.
        Float16 = "float16",
    }
}

/// Parses a `T` with its `FromStr`; `--help` shows `names`.
#[derive(Debug, Clone)]
pub struct Values<T> {
    names: &'static [&'static str],
    kind: PhantomData<fn() -> T>,
}

/// The parser of a choice enum: its names.
pub fn choice<T: kto_core::Choice>() -> Values<T> {
    Values { names: T::NAMES, kind: PhantomData }
}

/// The parser of any `FromStr` value whose accepted forms `names` describes.
pub fn values<T>(names: &'static [&'static str]) -> Values<T> {
    Values { names, kind: PhantomData }
}

impl<T> TypedValueParser for Values<T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let flag = arg.and_then(|a| a.get_long()).map(|l| format!("--{l}")).unwrap_or_else(|| "a value".into());
        let text = value
            .to_str()
            .ok_or_else(|| clap::Error::raw(ErrorKind::InvalidUtf8, format!("{flag}: not UTF-8\n")).with_cmd(cmd))?;
        // Every parser's message names the accepted values already.
        text.parse::<T>().map_err(|e| {
            clap::Error::raw(ErrorKind::InvalidValue, format!("invalid value for {flag}: {e}\n")).with_cmd(cmd)
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(self.names.iter().map(|n| PossibleValue::new(*n))))
    }
}

/// `--lora-target-modules`' accepted forms: all-linear, or comma-separated projections.
pub const LORA_TARGETS: [&str; 10] = {
    let mut names = ["all-linear"; 10];
    let mut i = 0;
    while i < kto_models::PROJECTIONS.len() {
        names[i + 1] = kto_models::PROJECTIONS[i];
        i += 1;
    }
    names
};

/// The parser of `--device` and `--devices` (the names this build has).
pub fn devices<T>() -> Values<T> {
    values(crate::device::compiled_devices().leak())
}
