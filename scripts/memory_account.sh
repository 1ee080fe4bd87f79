#!/usr/bin/env bash
# Where `kto train`'s peak memory goes, on one bench model: the run of scripts/bench-vs-trl.sh
# (fp32, batch 4 of prompt 64 + completion 128 tokens, KL pairs, a separate reference, AdamW,
# no gradient checkpointing) against runs that each drop one part:
#
#   full                      the bench run
#   sgd                       --optim sgd: no AdamW moments
#   precomputed reference     --precompute-ref-log-probs: no reference model while training
#   gradient checkpointing    --gradient-checkpointing: the layers' activations recomputed
#   no graph                  `kto logps` on the same rows: one model and no-graph forwards
#
# Each part is the full run's peak RSS minus the run without it; the table puts the measured
# differences beside the analytic sizes (4 bytes per parameter for each of the weights, the
# gradients and the reference, 8 for the two moments) and the logits the log-prob head keeps.
#
#   bash scripts/memory_account.sh [40m|0.5b] [THREADS]
#
# SKIP_BUILD=1 uses the release binaries already built (while another cargo build holds the
# target dir); KTO_BIN names another kto binary to measure.
#
# Prints a Markdown table and writes memory_account.json in the work folder; nothing is
# downloaded and Python's standard library is all it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
size="${1:-40m}"
threads="${2:-2}"
case "$size" in
  40m) vocab=32000 ;;
  0.5b) vocab=151936 ;;
  *) echo "unknown size $size (40m or 0.5b)" >&2; exit 2 ;;
esac
steps=2
work="${TMPDIR:-/tmp}/kto-memory-account-$size"
rm -rf "$work" && mkdir -p "$work"
if [ -z "${SKIP_BUILD:-}" ]; then  # `--example` limits a build to examples: the binary is its own build
  cargo build --release -p kto-cli 2>/dev/null
  cargo build --release -p kto --example bench_model 2>/dev/null
fi
kto="${KTO_BIN:-target/release/kto}"
target/release/examples/bench_model "$work/model" "$size" 2>/dev/null
python3 scripts/gpu_check.py rows "$work/data.jsonl" $(( steps * 4 )) 64 128 "$vocab" >/dev/null

common=(--model "$work/model" --dataset "$work/data.jsonl" --device flex --per-device-train-batch-size 4
        --max-length 0)
train=(train "${common[@]}" --max-steps "$steps" --learning-rate 1e-5 --logging-steps 1 --save-steps 0)
peak_kib() { # the peak RSS in KiB of one kto command
  RAYON_NUM_THREADS="$threads" /usr/bin/time -f "%M" "$kto" "$@" 2>&1 >/dev/null | tail -1
}
no_gc=(--gradient-checkpointing false)
full=$(peak_kib "${train[@]}" "${no_gc[@]}" --output-dir "$work/full")
sgd=$(peak_kib "${train[@]}" "${no_gc[@]}" --optim sgd --output-dir "$work/sgd")
precomputed=$(peak_kib "${train[@]}" "${no_gc[@]}" --precompute-ref-log-probs true --output-dir "$work/precomputed")
checkpointed=$(peak_kib "${train[@]}" --gradient-checkpointing true --output-dir "$work/gc")
no_graph=$(peak_kib logps "${common[@]}" --out "$work/logps.jsonl")

python3 - "$work" "$size" "$full" "$sgd" "$precomputed" "$checkpointed" "$no_graph" "$vocab" <<'PY'
import json, sys
work, size = sys.argv[1], sys.argv[2]
full, sgd, precomputed, checkpointed, no_graph = (int(v) * 1024 for v in sys.argv[3:8])
vocab = int(sys.argv[8])
params = {"40m": 39_993_856, "0.5b": 494_032_768}[size]
mib = lambda b: b / 2**20
# The head is applied to the positions that score a completion token: 128 per row, 4 rows; the
# graph keeps one f32 [rows, positions, vocab] tensor (exp of the shifted logits) per chunk.
logits = 4 * 128 * vocab * 4
rows = [
    ("total (peak RSS of the bench run)", None, full),
    ("AdamW moments (full - sgd)", 8 * params, full - sgd),
    ("reference model (full - precomputed reference)", 4 * params, full - precomputed),
    ("saved activations (full - gradient checkpointing)", None, full - checkpointed),
    ("policy weights + no-graph forwards (kto logps)", 4 * params, no_graph),
    ("gradients", 4 * params, None),
    ("log-prob head's saved exp(logits), 4 x 128 x vocab f32", logits, None),
]
floor = 20 * params
print(f"| {size}: {params:,} parameters | analytic MiB | measured MiB |")
print("|---|---|---|")
for name, analytic, measured in rows:
    a = f"{mib(analytic):.0f}" if analytic is not None else ""
    m = f"{mib(measured):.0f}" if measured is not None else ""
    print(f"| {name} | {a} | {m} |")
print(f"| fp32 floor (20 bytes per parameter) | {mib(floor):.0f} | |")
print(f"\npeak / floor = {full / floor:.3f}")
json.dump({"size": size, "parameters": params, "peak_rss_bytes": {
    "full": full, "sgd": sgd, "precomputed_reference": precomputed, "gradient_checkpointing": checkpointed,
    "no_graph_logps": no_graph}, "floor_bytes": floor, "logits_bytes": logits},
    open(f"{work}/memory_account.json", "w"), indent=1)
PY
