#!/usr/bin/env bash
# Side by side on this machine, in one run: TRL's KTOTrainer and `kto train` on the same random
# model (40m: the 40M-parameter Qwen2-like benches/qwen2-40m-config.json; 0.5b: Qwen2.5-0.5B's
# shape, benches/qwen2-0.5b-config.json, 494M parameters, vocabulary 151,936) and the same pre-tokenized rows
# (batch 4, prompt 64 + completion 128, KL pairs, separate reference, AdamW, fp32, no gradient
# checkpointing). Prints tokens/s and peak RSS of each, the ratios, and kto's GFLOP/s against
# the measured fp32 sgemm peaks of torch and of burn (flex, `kto devices --matmul 2048`), and the
# instruction set the CPU offers (AVX-512 or AVX2).
#
#   PYTHON=/path/to/venv/bin/python bash scripts/bench-vs-trl.sh [STEPS] [THREADS] [40m|0.5b]
#
# PYTHON must have torch, transformers, datasets and trl (1.16); nothing is downloaded.
# KTO_BIN names another kto binary to time (an A/B against the release build); it is run on the
# same model and rows as the release build would be.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:?set PYTHON to a Python with torch, transformers, datasets and trl}"
steps="${1:-8}"
threads="${2:-2}"
size="${3:-40m}"
case "$size" in
  40m) vocab=32000 ;;
  0.5b) vocab=151936 ;;
  *) echo "unknown size $size (40m or 0.5b)" >&2; exit 2 ;;
esac
warmup=1
work="${TMPDIR:-/tmp}/kto-bench-vs-trl-$size"
rm -rf "$work" && mkdir -p "$work"

cargo run --release --example bench_model -- "$work/model" "$size" 2>/dev/null
cargo build --release -p kto-cli 2>/dev/null
kto_bin="${KTO_BIN:-target/release/kto}"
# Random token ids, exact lengths; 3 of 4 rows desirable.
"$python" scripts/gpu_check.py rows "$work/data.jsonl" $(( (steps + warmup) * 4 )) 64 128 "$vocab" >/dev/null

trl_start=$(date +%s.%N)
trl_json=$(OMP_NUM_THREADS="$threads" "$python" scripts/bench_trl_side.py "$work/model" "$work/data.jsonl" "$steps" "$warmup" "$threads" 2>/dev/null | tail -1)
trl_wall=$(echo "$(date +%s.%N) - $trl_start" | bc)
kto_start=$(date +%s.%N)
kto_rss_kib=$(RAYON_NUM_THREADS="$threads" /usr/bin/time -f "%M" "$kto_bin" train --model "$work/model" \
    --dataset "$work/data.jsonl" --output-dir "$work/kto" --per-device-train-batch-size 4 \
    --max-steps $(( steps + warmup )) --max-length 0 --learning-rate 1e-5 --gradient-checkpointing false \
    --save-steps 0 --logging-steps 1 2>&1 >/dev/null | tail -1)
kto_wall=$(echo "$(date +%s.%N) - $kto_start" | bc)

burn_sgemm=$(RAYON_NUM_THREADS="$threads" "$kto_bin" devices --devices flex --matmul 2048 --json)
isa=AVX2
grep -q avx512f /proc/cpuinfo && isa=AVX-512
"$python" - "$trl_json" "$kto_rss_kib" "$work/kto/run_summary.json" "$warmup" "$burn_sgemm" "$isa" "$size" \
    "$trl_wall" "$kto_wall" "$kto_bin" <<'PY'
import json, statistics, sys
trl = json.loads(sys.argv[1])
trl_wall, kto_wall = float(sys.argv[8]), float(sys.argv[9])
kto_rss_mib = int(sys.argv[2]) / 1024
summary = json.load(open(sys.argv[3]))
warmup = int(sys.argv[4])
burn_sgemm = json.loads(sys.argv[5])[0]["dtypes"]["f32"]["matmul_gflops"]
params = {"40m": 39_993_856, "0.5b": 494_032_768}[sys.argv[7]]
step_s = statistics.median(summary["step_seconds"][warmup:])
tokens = 4 * (64 + 128)
kto_tps = tokens / step_s
# 12 N T: one forward + backward with grad (6 N T) and three no-graph forwards (2 N T each).
flop = 12 * params * tokens
print(json.dumps({
    "trl": {"tokens_per_s": round(trl["tokens_per_s"], 1), "seconds_per_step": round(trl["seconds_per_step"], 3),
            "peak_rss_mib": round(trl["peak_rss_mib"], 1), "process_wall_s": round(trl_wall, 1),
            "final_loss": trl.get("final_loss")},
    "kto": {"tokens_per_s": round(kto_tps, 1), "seconds_per_step": round(step_s, 3), "peak_rss_mib": round(kto_rss_mib, 1),
            "gflops": round(flop / step_s / 1e9, 1), "process_wall_s": round(kto_wall, 1),
            "final_loss": summary["final"]["loss"], "binary": sys.argv[10]},
    "ratios": {"tokens_per_s_kto_over_trl": round(kto_tps / trl["tokens_per_s"], 3),
               "process_wall_kto_over_trl": round(kto_wall / trl_wall, 3),
               "peak_rss_kto_over_trl": round(kto_rss_mib / trl["peak_rss_mib"], 3)},
    "size": sys.argv[7], "parameters": params, "instruction_set": sys.argv[6],
    "sgemm_peak_gflops": {"torch": round(trl["sgemm_peak_gflops"], 1), "burn_flex": round(burn_sgemm, 1)},
    "kto_fraction_of_peak": {"torch": round(flop / step_s / 1e9 / trl["sgemm_peak_gflops"], 3),
                             "burn_flex": round(flop / step_s / 1e9 / burn_sgemm, 3)},
    "versions": trl["versions"],
}, indent=1))
PY
