//! Paired preference data (`prompt`/`chosen`/`rejected`, or implicit-prompt `chosen`/`rejected`)
//! to unpaired KTO rows (`prompt`/`completion`/`label`), exactly as TRL 1.16 unpairs it: the
//! shared prompt extracted from implicit pairs, and in each block of 1000 pairs all the chosen rows
//! first, then all the rejected ones. Extra columns are copied onto both rows.
//!
//! ```sh
//! cargo run --example unpair [PAIRED.jsonl|.json|.parquet] [OUT.jsonl]
//! ```
//!
//! Without arguments it converts the implicit-prompt fixture `pairwise_implicit.jsonl`.

use std::io::Write;
use std::path::{Path, PathBuf};

use kto::data::{Content, DataFile, read_dataset};
use serde_json::{Map, Value, json};

fn content(c: &Content) -> Value {
    match c {
        Content::Text(text) => json!(text),
        Content::Messages(messages) => json!(messages),
        Content::Tokens(ids) => json!(ids),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/datasets");
    let mut args = std::env::args().skip(1);
    let input = args.next().map_or_else(|| fixtures.join("pairwise_implicit.jsonl"), PathBuf::from);
    let output = args.next().map_or_else(|| std::env::temp_dir().join("kto-unpaired.jsonl"), PathBuf::from);

    let dataset = read_dataset(&[DataFile::new(&input)?])?;

    // Write next to the target and rename, so a failure never leaves half a file behind.
    let partial = output.with_extension("jsonl.partial");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&partial)?);
    let (mut desirable, mut undesirable) = (0, 0);
    for example in &dataset.examples {
        let mut row = Map::new();
        let tokens = matches!(example.completion, Content::Tokens(_));
        let (prompt_key, completion_key) =
            if tokens { ("prompt_ids", "completion_ids") } else { ("prompt", "completion") };
        row.insert(prompt_key.into(), content(&example.prompt));
        row.insert(completion_key.into(), content(&example.completion));
        row.insert("label".into(), json!(example.label));
        for (key, value) in &example.extra {
            row.insert(key.clone(), value.clone());
        }
        serde_json::to_writer(&mut file, &row)?;
        file.write_all(b"\n")?;
        if example.label { desirable += 1 } else { undesirable += 1 }
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&partial, &output)?;
    println!(
        "{}: {} rows ({desirable} desirable, {undesirable} undesirable) -> {}",
        input.display(),
        dataset.examples.len(),
        output.display()
    );
    Ok(())
}
