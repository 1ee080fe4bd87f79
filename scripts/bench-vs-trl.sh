#!/usr/bin/env bash
# Side by side on this machine, in one run: TRL's KTOTrainer and `kto train` on the same random
# 40M-parameter Qwen2-like model (benches/qwen2-40m-config.json) and the same pre-tokenized rows
# (batch 4, prompt 64 + completion 128, KL pairs, separate reference, AdamW, fp32, no gradient
# checkpointing). Prints tokens/s and peak RSS of each, the ratios, and kto's GFLOP/s against
# torch's measured fp32 sgemm peak.
#
#   PYTHON=/path/to/venv/bin/python bash scripts/bench-vs-trl.sh [STEPS] [THREADS]
#
# PYTHON must have torch, transformers, datasets and trl (1.16); nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:?set PYTHON to a Python with torch, transformers, datasets and trl}"
steps="${1:-8}"
threads="${2:-2}"
warmup=1
work="${TMPDIR:-/tmp}/kto-bench-vs-trl"
rm -rf "$work" && mkdir -p "$work"

cargo run --release --example bench_model -- "$work/model" 2>/dev/null
cargo build --release -p kto-cli 2>/dev/null
# Random token ids, exact lengths; 3 of 4 rows desirable.
"$python" - "$work/data.jsonl" $(( (steps + warmup) * 4 )) <<'PY'
import json, random, sys
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write(json.dumps({"prompt_ids": [rng.randrange(1, 32000) for _ in range(64)],
                            "completion_ids": [rng.randrange(1, 32000) for _ in range(128)],
                            "label": i % 4 != 3}) + "\n")
PY

trl_json=$(OMP_NUM_THREADS="$threads" "$python" scripts/bench_trl_side.py "$work/model" "$work/data.jsonl" "$steps" "$warmup" "$threads" 2>/dev/null | tail -1)
kto_rss_kib=$(RAYON_NUM_THREADS="$threads" /usr/bin/time -f "%M" target/release/kto train --model "$work/model" \
    --dataset "$work/data.jsonl" --output-dir "$work/kto" --per-device-train-batch-size 4 \
    --max-steps $(( steps + warmup )) --max-length 0 --learning-rate 1e-5 --gradient-checkpointing false \
    --save-steps 0 --logging-steps 1 2>&1 >/dev/null | tail -1)

"$python" - "$trl_json" "$kto_rss_kib" "$work/kto/run_summary.json" "$warmup" <<'PY'
import json, statistics, sys
trl = json.loads(sys.argv[1])
kto_rss_mib = int(sys.argv[2]) / 1024
summary = json.load(open(sys.argv[3]))
warmup = int(sys.argv[4])
step_s = statistics.median(summary["step_seconds"][warmup:])
tokens = 4 * (64 + 128)
kto_tps = tokens / step_s
# 12 N T: one forward + backward with grad (6 N T) and three no-graph forwards (2 N T each).
flop = 12 * 39_993_856 * tokens
print(json.dumps({
    "trl": {"tokens_per_s": round(trl["tokens_per_s"], 1), "seconds_per_step": round(trl["seconds_per_step"], 3),
            "peak_rss_mib": round(trl["peak_rss_mib"], 1)},
    "kto": {"tokens_per_s": round(kto_tps, 1), "seconds_per_step": round(step_s, 3), "peak_rss_mib": round(kto_rss_mib, 1),
            "gflops": round(flop / step_s / 1e9, 1)},
    "ratios": {"tokens_per_s_kto_over_trl": round(kto_tps / trl["tokens_per_s"], 3),
               "peak_rss_kto_over_trl": round(kto_rss_mib / trl["peak_rss_mib"], 3)},
    "sgemm_peak_gflops": round(trl["sgemm_peak_gflops"], 1),
    "kto_fraction_of_peak": round(flop / step_s / 1e9 / trl["sgemm_peak_gflops"], 3),
    "versions": trl["versions"],
}, indent=1))
PY
