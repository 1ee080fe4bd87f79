#!/usr/bin/env bash
# Peak RSS and step time of `kto train` in each precision mode on one bench model: fp32, --bf16
# (TRL's mixed precision: f32 masters), --bf16-weights, and --bf16-weights --bf16-moments. Same
# random rows (batch 4, prompt 64 + completion 128 tokens, 3 of 4 desirable), AdamW, a separate
# reference (the policy's own folder), flex, gradient checkpointing on (TRL's default).
#
#   bash scripts/precision_memory.sh [40m|0.5b] [STEPS] [THREADS]
#
# MODES="bf16-weights bf16-weights+moments" runs only those.
#
# 40m: benches/qwen2-40m-config.json (40.0M parameters); 0.5b: Qwen2.5-0.5B's shape (494M,
# vocabulary 151,936). Prints one JSON object; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/precision_modes.sh
size="${1:-40m}"
steps="${2:-3}"
threads="${3:-2}"
case "$size" in
  40m) vocab=32000 ;;
  0.5b) vocab=151936 ;;
  *) echo "unknown size $size (40m or 0.5b)" >&2; exit 2 ;;
esac
work="${TMPDIR:-/tmp}/kto-precision-memory-$size"
rm -rf "$work" && mkdir -p "$work"
cargo build --release -p kto --example bench_model 2>/dev/null            # the bench model
cargo build --release -p kto-cli 2>/dev/null                             # the kto binary
target/release/examples/bench_model "$work/model" "$size" 2>/dev/null
python3 scripts/gpu_check.py rows "$work/data.jsonl" $(( steps * 4 )) 64 128 "$vocab" >/dev/null
common=(train --model "$work/model" --ref-model "$work/model" --dataset "$work/data.jsonl" --device flex
        --optim adamw_torch --learning-rate 5e-7 --per-device-train-batch-size 4 --max-steps "$steps"
        --max-length 0 --logging-steps 1 --save-steps 0)
results=()
for mode in ${MODES:-$PRECISION_MODES}; do
  precision_flags "$mode"
  kib=$(RAYON_NUM_THREADS="$threads" /usr/bin/time -f "%M" target/release/kto "${common[@]}" "${flags[@]}" \
        --output-dir "$work/$mode" 2>&1 >/dev/null | tail -1)
  results+=("$mode=$kib")
done
python3 - "$work" "$size" "${results[@]}" <<'PY'
import json, statistics, sys
work, size, results = sys.argv[1], sys.argv[2], sys.argv[3:]
out = {"size": size, "modes": {}}
for item in results:
    mode, kib = item.split("=")
    summary = json.load(open(f"{work}/{mode}/run_summary.json"))
    steps = summary["step_seconds"][1:] or summary["step_seconds"]
    out["modes"][mode] = {"peak_rss_mib": round(int(kib) / 1024, 1),
                          "median_step_s": round(statistics.median(steps), 2),
                          "final_loss": summary["final"]["loss"]}
if "fp32" in out["modes"]:
    fp32 = out["modes"]["fp32"]["peak_rss_mib"]
    for m in out["modes"].values():
        m["rss_over_fp32"] = round(m["peak_rss_mib"] / fp32, 3)
print(json.dumps(out, indent=1))
PY
