#!/usr/bin/env bash
# Peak RSS of `kto train` on the 40M Qwen2-like bench model: full fine-tuning with a separate
# reference model against LoRA (r 16 on q_proj,v_proj; the reference is the base with adapters
# off). Same data, batch and steps; flex, f32, no gradient checkpointing.
#   bash scripts/lora_memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work="${TMPDIR:-/tmp}/kto-lora-memory"
rm -rf "$work" && mkdir -p "$work"
cargo run --release --example bench_model -- "$work/model" 2>/dev/null
cargo build --release -p kto-cli 2>/dev/null
common=(train --model "$work/model" --dataset tests/fixtures/datasets/kto_standard.jsonl --max-steps 4
        --per-device-train-batch-size 4 --learning-rate 1e-4 --logging-steps 1 --save-steps 0
        --gradient-checkpointing false --max-length 256)
rss() { /usr/bin/time -f "%M" "$@" 2>&1 >/dev/null | tail -1; }
full=$(rss target/release/kto "${common[@]}" --output-dir "$work/full")
lora=$(rss target/release/kto "${common[@]}" --output-dir "$work/lora" --use-peft --lora-r 16 --lora-alpha 32)
echo "{\"full_ft_peak_rss_kib\": $full, \"lora_peak_rss_kib\": $lora, \"ratio\": $(python3 -c "print(round($lora/$full, 3))")}"
