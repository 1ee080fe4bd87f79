//! Dataset throughput: reading and tokenizing a 100k-row synthetic dataset with TRL 1.16's rules
//! (tiny-qwen2's byte-level BPE tokenizer), in parallel on every core and on one thread.
//!
//! - `data/read_jsonl_100k`: JSONL lines to typed examples;
//! - `data/tokenize_standard_100k[_1thread]`: text prompt/completion rows (EOS appended, two
//!   encodes per row, common prefix, KL pairs);
//! - `data/tokenize_chat_100k`: the same rows as conversations through the chat template.
//!
//! Run: `cargo bench --bench tokenize` (throughput is reported in rows/s).

use std::io::Write;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kto::data::{HfTokenizer, TokenizeConfig, read_jsonl, tokenize_examples};
use kto_testkit::fixture;

const ROWS: usize = 100_000;

/// A deterministic arithmetic Q/A row (about 20 prompt and 25 completion tokens).
fn row(i: usize, chat: bool) -> String {
    let (a, b) = (i % 97, (i * 31) % 89);
    let prompt = format!("Question {i}: what is {a} plus {b}? Explain briefly.");
    let completion = format!(" {a} plus {b} is {}, because adding {b} to {a} gives {}.", a + b + i % 2, a + b);
    let label = !i.is_multiple_of(3);
    if chat {
        serde_json::json!({
            "prompt": [{"role": "user", "content": prompt}],
            "completion": [{"role": "assistant", "content": completion}],
            "label": label,
        })
        .to_string()
    } else {
        serde_json::json!({"prompt": prompt, "completion": completion, "label": label}).to_string()
    }
}

fn dataset(chat: bool) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".jsonl").tempfile().expect("temp file");
    let mut out = std::io::BufWriter::new(&mut file);
    for i in 0..ROWS {
        writeln!(out, "{}", row(i, chat)).expect("write");
    }
    drop(out);
    file
}

fn bench(c: &mut Criterion) {
    let tokenizer = HfTokenizer::from_folder(&fixture("models/tiny-qwen2")).expect("tokenizer");
    let config = TokenizeConfig::trl(8);
    let standard_file = dataset(false);
    let chat_file = dataset(true);
    let standard = read_jsonl(standard_file.path()).expect("reads");
    let chat = read_jsonl(chat_file.path()).expect("reads");

    let mut group = c.benchmark_group("data");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("read_jsonl_100k", |b| b.iter(|| read_jsonl(standard_file.path()).expect("reads")));
    group.bench_function("tokenize_standard_100k", |b| {
        b.iter(|| tokenize_examples(&standard, &tokenizer, &config).expect("tokenizes"))
    });
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    group.bench_function("tokenize_standard_100k_1thread", |b| {
        b.iter(|| one_thread.install(|| tokenize_examples(&standard, &tokenizer, &config).expect("tokenizes")))
    });
    group.bench_function("tokenize_chat_100k", |b| {
        b.iter(|| tokenize_examples(&chat, &tokenizer, &config).expect("tokenizes"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
