//! Every way a dataset can be given reads to the same examples as its JSONL original: Parquet
//! (one and many row groups, snappy/zstd/gzip), JSON arrays, Hugging Face repo folders with
//! splits, and a hub id in a Hugging Face cache laid out on disk; plus extra columns, `tools` and
//! `chat_template_kwargs`.

use kto_data::{
    Content, Example, HfTokenizer, RecordShape, TokenizeConfig, load_dataset, read_jsonl, tokenize_examples,
};
use kto_testkit::fixture;

fn spec(rel: &str) -> String {
    fixture(rel).to_str().expect("utf-8 path").to_string()
}

/// Prompt, completion and label of each example (what must not depend on the file format).
fn essence(examples: &[Example]) -> Vec<(Content, Content, bool, usize)> {
    examples.iter().map(|e| (e.prompt.clone(), e.completion.clone(), e.label, e.source_row)).collect()
}

#[test]
fn parquet_and_json_read_like_jsonl() {
    for (original, copies) in [
        (
            "datasets/kto_standard.jsonl",
            &["formats/kto_standard.parquet", "formats/kto_standard_rowgroups.parquet", "formats/kto_standard.json"][..],
        ),
        (
            "datasets/kto_conversational.jsonl",
            &["formats/kto_conversational.parquet", "formats/kto_conversational_gzip.parquet"][..],
        ),
        (
            "datasets/pairwise_explicit.jsonl",
            &["formats/pairwise_explicit.parquet", "formats/pairwise_explicit.json"][..],
        ),
        ("datasets/pairwise_implicit.jsonl", &["formats/pairwise_implicit.parquet"][..]),
    ] {
        let expected = essence(&read_jsonl(&fixture(original)).expect("original reads"));
        for copy in copies {
            let dataset = load_dataset(&spec(copy), "train").unwrap_or_else(|e| panic!("{copy}: {e}"));
            assert_eq!(essence(&dataset.examples), expected, "{copy} reads like {original}");
        }
    }
}

#[test]
fn parquet_rows_are_located_by_row_number() {
    let dataset = load_dataset(&spec("formats/kto_standard_rowgroups.parquet"), "train").expect("reads");
    // 64 rows in 10 row groups of 7 (the last has 1): row numbers run on across groups.
    let at = &dataset.examples[63].at;
    assert!(at.to_string().ends_with("kto_standard_rowgroups.parquet: row 63"), "{at}");
    assert_eq!(dataset.shape, RecordShape::Unpaired);
    assert!(!dataset.conversational);
    let pairs = load_dataset(&spec("formats/pairwise_implicit.parquet"), "train").expect("reads");
    assert_eq!((pairs.shape, pairs.examples.len()), (RecordShape::PairedImplicit, 32), "16 pairs unpair to 32 rows");
}

#[test]
fn repo_folders_are_split_by_file_name() {
    let standard = read_jsonl(&fixture("datasets/kto_standard.jsonl")).expect("reads");
    let train = load_dataset(&spec("formats/repo_layout"), "train").expect("train split");
    // data/train-00000-of-00002 (rows 0..20) then data/train-00001-of-00002 (rows 20..64).
    assert_eq!(essence(&train.examples), essence(&standard));
    assert_eq!(train.files.len(), 2);
    let test = load_dataset(&spec("formats/repo_layout"), "test").expect("test split");
    assert_eq!(essence(&test.examples), essence(&standard[..6]));

    let train = load_dataset(&spec("formats/jsonl_layout"), "train").expect("train.jsonl");
    assert_eq!(train.examples.len(), 24);
    // `dev` and `val` are synonyms of the validation split, as on the Hub.
    let dev = load_dataset(&spec("formats/jsonl_layout"), "dev").expect("validation.jsonl");
    assert_eq!(dev.examples.len(), 6);
    let err = load_dataset(&spec("formats/jsonl_layout"), "test").expect_err("no test split").to_string();
    assert!(err.ends_with("no data files for split \"test\" (found: train.jsonl, validation.jsonl)"), "{err}");
}

#[test]
fn hub_ids_resolve_in_a_local_cache() {
    // The cache is laid out as huggingface_hub writes it: refs/main -> snapshots/<commit>/ with
    // relative symlinks into blobs/.
    let cache = fixture("formats/hf_home/hub");
    let snapshot = kto_data::cached_snapshot(&cache, "datasets", "kto-test/zen-kto", "main").expect("in the cache");
    assert!(snapshot.ends_with("snapshots/0123456789abcdef0123456789abcdef01234567"));
    let by_commit =
        kto_data::cached_snapshot(&cache, "datasets", "kto-test/zen-kto", "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(by_commit.as_ref(), Ok(&snapshot));
    let missing = kto_data::cached_snapshot(&cache, "datasets", "kto-test/other", "main").expect_err("not cached");
    assert!(missing.starts_with("kto-test/other is not in the Hugging Face cache"), "{missing}");

    // Through the environment (`HF_HUB_CACHE`) as users call it: kto-cli's tests/audit.rs.
    let dataset = kto_data::read_dataset(
        &kto_data::resolve_dataset(snapshot.to_str().expect("utf-8"), "train").expect("resolves"),
    )
    .expect("reads");
    let standard = read_jsonl(&fixture("datasets/kto_standard.jsonl")).expect("reads");
    assert_eq!(essence(&dataset.examples), essence(&standard));
}

#[test]
fn extra_columns_are_carried_through() {
    let examples = read_jsonl(&fixture("formats/kto_extra_columns.jsonl")).expect("reads");
    assert_eq!(examples.len(), 12);
    assert_eq!(examples[3].extra["source"], "zen-3");
    assert_eq!(examples[3].extra["score"], 1.5);
    assert!(!examples[3].extra.contains_key("label"), "known columns are typed, not extra");
}

#[test]
fn tools_and_template_kwargs_reach_the_chat_template() {
    let examples = read_jsonl(&fixture("formats/kto_tools_conversational.jsonl")).expect("reads");
    // Even rows hold a list, odd rows the same list as a JSON string: both parse to the list.
    assert_eq!(examples[0].tools, examples[1].tools);
    assert_eq!(examples[0].tools.as_ref().expect("tools")[0]["function"]["name"], "get_time");
    assert_eq!(examples[2].chat_template_kwargs.as_ref().expect("kwargs")["enable_thinking"], false);

    // A tokenizer whose template renders `tools` with `tojson` and reads `enable_thinking`
    // (formats/tok-tools, with tiny-qwen2's tokenizer.json); transformers' rendering of row 1 is
    // in expected.json.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(fixture("formats/tok-tools/tokenizer_config.json"), dir.path().join("tokenizer_config.json"))
        .expect("copy");
    std::fs::copy(fixture("models/tiny-qwen2/tokenizer.json"), dir.path().join("tokenizer.json")).expect("copy");
    let tokenizer = HfTokenizer::from_folder(dir.path()).expect("tokenizer");
    let expected = kto_testkit::read_json("formats/tok-tools/expected.json");
    let row = &examples[1];
    let Content::Messages(prompt) = &row.prompt else { panic!("conversational") };
    let inputs = kto_data::TemplateInputs { tools: row.tools.as_ref(), kwargs: row.chat_template_kwargs.as_ref() };
    let text = tokenizer.render_chat(prompt, true, inputs).expect("renders");
    assert_eq!(text, expected["prompt_text"].as_str().expect("text"));
    let tokenized = tokenize_examples(&examples[1..2], &tokenizer, &TokenizeConfig::trl(4)).expect("tokenizes");
    let ids: Vec<u64> = tokenized.rows[0].prompt_ids.iter().map(|&i| u64::from(i)).collect();
    let want: Vec<u64> =
        expected["prompt_ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id")).collect();
    assert_eq!(ids, want);
}

#[test]
fn pre_tokenized_rows_pass_through_unchanged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ids.jsonl");
    std::fs::write(
        &path,
        "{\"prompt_ids\": [5, 6, 7], \"completion_ids\": [8, 9], \"label\": true}\n\
         {\"prompt_ids\": [1], \"completion_ids\": [2, 3, 4], \"label\": 0}\n",
    )
    .expect("write");
    let examples = read_jsonl(&path).expect("reads");
    assert_eq!(examples[0].prompt, Content::Tokens(vec![5, 6, 7]));
    let tokenizer = HfTokenizer::from_folder(&fixture("models/tiny-qwen2")).expect("tokenizer");
    let rows = tokenize_examples(&examples, &tokenizer, &TokenizeConfig::trl(2)).expect("tokenizes").rows;
    // No EOS is added and nothing is re-tokenized; KL pairs rotate as usual.
    assert_eq!((rows[0].prompt_ids.clone(), rows[0].completion_ids.clone()), (vec![5, 6, 7], vec![8, 9]));
    assert_eq!(rows[0].kl_completion_ids, Some(vec![2, 3, 4]));
    assert_eq!(rows[1].kl_completion_ids, Some(vec![8, 9]));

    std::fs::write(&path, "{\"prompt_ids\": [5, -1], \"completion_ids\": [8], \"label\": true}\n").expect("write");
    let err = read_jsonl(&path).expect_err("negative id").to_string();
    assert!(err.ends_with(":1: field \"prompt_ids\": item 1: expected a token id, found -1"), "{err}");
}

/// What transformers' chat-template renderer does beyond plain Jinja (formats/tok-semantics,
/// rendered by transformers in expected.json): `{% generation %}` blocks render their body with
/// their whitespace control, `|length` of an undefined variable is 0, and `tools`/`documents`
/// are none when not given, so a `tools is not none` section stays out.
#[test]
fn chat_templates_render_with_transformers_semantics() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(fixture("formats/tok-semantics/tokenizer_config.json"), dir.path().join("tokenizer_config.json"))
        .expect("copy");
    std::fs::copy(fixture("models/tiny-qwen2/tokenizer.json"), dir.path().join("tokenizer.json")).expect("copy");
    let tokenizer = HfTokenizer::from_folder(dir.path()).expect("a template with generation blocks compiles");
    let expected = kto_testkit::read_json("formats/tok-semantics/expected.json");
    let messages: Vec<kto_data::Message> = serde_json::from_value(expected["messages"].clone()).expect("messages");
    let full = tokenizer.apply_chat_template(&messages, false).expect("renders");
    assert_eq!(full, expected["full_text"].as_str().expect("text"));
    let prompt = tokenizer.apply_chat_template(&messages[..3], true).expect("renders");
    assert_eq!(prompt, expected["prompt_text"].as_str().expect("text"));
}
