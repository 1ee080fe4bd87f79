#!/usr/bin/env bash
# What is alive at the heap's peak during `kto train` on one bench model, by who allocated it:
# heaptrack records every allocation with its call stack, and the stacks alive at the peak are
# grouped here into the loaded weights, the optimizer's moments (and the weights it rewrote), the
# policy's saved activations, the log-prob heads, and the backward's gradients and temporaries.
# The run is scripts/bench-vs-trl.sh's (fp32, batch 4 of prompt 64 + completion 128, KL pairs, a
# separate reference, AdamW), 2 steps, so the moments exist at the second step's peak.
#
#   bash scripts/heap_peak.sh [40m|0.5b] [true|false: gradient checkpointing] [THREADS]
#
# SKIP_BUILD=1 uses the release binaries already built; KTO_BIN names another kto binary.
# Needs heaptrack (apt-get install heaptrack) and Python's standard library. Under heaptrack the
# 0.5b run takes about 4 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
size="${1:-40m}"
checkpointing="${2:-false}"
threads="${3:-2}"
case "$size" in
  40m) vocab=32000 ;;
  0.5b) vocab=151936 ;;
  *) echo "unknown size $size (40m or 0.5b)" >&2; exit 2 ;;
esac
work="${TMPDIR:-/tmp}/kto-heap-peak-$size"
rm -rf "$work" && mkdir -p "$work"
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -p kto-cli 2>/dev/null
  cargo build --release -p kto --example bench_model 2>/dev/null
fi
kto="$(realpath "${KTO_BIN:-target/release/kto}")"
target/release/examples/bench_model "$work/model" "$size" 2>/dev/null
python3 scripts/gpu_check.py rows "$work/data.jsonl" 8 64 128 "$vocab" >/dev/null
# KTO_HEAP_SETTINGS: no re-execution under heaptrack (it counts heap bytes, whatever glibc keeps).
KTO_HEAP_SETTINGS=off RAYON_NUM_THREADS="$threads" heaptrack -o "$work/heap" "$kto" train --model "$work/model" \
    --dataset "$work/data.jsonl" --output-dir "$work/kto" --device flex --per-device-train-batch-size 4 \
    --max-steps 2 --max-length 0 --learning-rate 1e-5 --gradient-checkpointing "$checkpointing" \
    --save-steps 0 --logging-steps 1 >"$work/train.log" 2>&1
heaptrack_print -f "$work/heap.zst" -a 0 -T 0 -p 0 --flamegraph-cost-type peak -F "$work/stacks.txt" \
    >"$work/summary.txt" 2>/dev/null
grep -E "peak heap|peak RSS" "$work/summary.txt"
python3 - "$work/stacks.txt" "$size" <<'PY'
import collections, sys
params = {"40m": 39_993_856, "0.5b": 494_032_768}[sys.argv[2]]

def part(stack):
    if "load_model" in stack:
        return "loaded weights (policy and reference; the policy's rewritten in place)"
    if "Optimizer" in stack and "step" in stack:
        return "optimizer: AdamW moments and weights it allocated"
    if "backward" in stack:
        if "embedding" in stack:
            return "backward: the embedding's gradient (scatter into zeros)"
        if "sum_dim" in stack:
            return "backward: linear layers' weight gradients"
        if "matmul" in stack:
            return "backward: matmul gradients (the tied head's among them)"
        return "backward: other gradients and temporaries"
    if "reference_pair_on" in stack or "reference_logps" in stack:
        return "reference pass (no graph)"
    if "logps_from_hidden" in stack and "policy_pair" in stack:
        return "policy pass: log-prob head"
    if "policy_pair" in stack:
        return "policy pass: saved activations"
    return "other"

bytes_by_part = collections.Counter()
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    bytes_by_part[part(stack)] += int(n)
mib = lambda b: b / 2**20
print(f"| alive at the heap's peak ({sys.argv[2]}) | MiB |")
print("|---|---|")
for name, b in bytes_by_part.most_common():
    if b >= 2**20:
        print(f"| {name} | {mib(b):.0f} |")
total = sum(bytes_by_part.values())
print(f"| total | {mib(total):.0f} |")
print(f"| fp32 floor (20 bytes per parameter) | {mib(20 * params):.0f} |")
print(f"\npeak heap / floor = {total / (20 * params):.3f}")
PY
