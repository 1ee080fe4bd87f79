#!/usr/bin/env bash
# Where `kto train`'s CPU time goes on one bench model, by sampling (perf's cpu-clock, so it
# also works where the CPU's hardware counters are not exposed): the run of
# scripts/bench-vs-trl.sh (fp32, batch 4 of prompt 64 + completion 128 tokens, KL pairs, a
# separate reference, AdamW, no gradient checkpointing), the samples grouped into gemm's
# kernels, exp/log, memory copies, the allocator and page faults, rayon's scheduling, and the rest.
#
#   bash scripts/profile_step.sh [40m|0.5b] [STEPS] [THREADS]
#
# SKIP_BUILD=1 uses the release binaries already built (while another cargo build holds the
# target dir).
#
# Needs perf (Debian's linux-perf) and Python's standard library. Prints a Markdown table and the
# 25 hottest symbols; perf.data stays in the work folder.
set -euo pipefail
cd "$(dirname "$0")/.."
size="${1:-40m}"
steps="${2:-3}"
threads="${3:-2}"
case "$size" in
  40m) vocab=32000 ;;
  0.5b) vocab=151936 ;;
  *) echo "unknown size $size (40m or 0.5b)" >&2; exit 2 ;;
esac
work="${TMPDIR:-/tmp}/kto-profile-$size"
rm -rf "$work" && mkdir -p "$work"
if [ -z "${SKIP_BUILD:-}" ]; then  # `--example` limits a build to examples: the binary is its own build
  cargo build --release -p kto-cli 2>/dev/null
  cargo build --release -p kto --example bench_model 2>/dev/null
fi
kto="${KTO_BIN:-target/release/kto}"
target/release/examples/bench_model "$work/model" "$size" 2>/dev/null
python3 scripts/gpu_check.py rows "$work/data.jsonl" $(( steps * 4 )) 64 128 "$vocab" >/dev/null
RAYON_NUM_THREADS="$threads" perf record -q -e cpu-clock -F 199 -o "$work/perf.data" -- "$kto" train \
    --model "$work/model" --dataset "$work/data.jsonl" --output-dir "$work/kto" --device flex \
    --per-device-train-batch-size 4 --max-steps "$steps" --max-length 0 --learning-rate 1e-5 \
    --gradient-checkpointing false --save-steps 0 --logging-steps 1 >/dev/null 2>&1
perf report -i "$work/perf.data" --stdio --no-children --sort symbol --percent-limit 0.05 2>/dev/null \
    > "$work/report.txt"
python3 - "$work/report.txt" <<'PY'
import re, sys
rows = []
for line in open(sys.argv[1]):
    m = re.match(r"\s*([\d.]+)%\s+\[[.k]\]\s+(.*)", line)
    if m:
        rows.append((float(m.group(1)), m.group(2).strip()))
groups = [
    ("gemm kernels (matmul)", r"gemm|nano_gemm|microkernel|matmul"),
    ("exp / log / tanh (libm)", r"(^|_)(exp|log|tanh)f?(_|$)|__ieee754"),
    ("memory copies and fills", r"memcpy|memmove|memset|copy_nonoverlapping"),
    ("allocator and page faults", r"malloc|free|_int_|mmap|munmap|page|clear_page|do_anonymous|asm_exc|handle_mm"),
    ("rayon / thread scheduling", r"rayon|crossbeam|sched_|futex|__lll|pthread|spin"),
]
totals = {name: 0.0 for name, _ in groups}
rest = 0.0
for pct, sym in rows:
    for name, pattern in groups:
        if re.search(pattern, sym):
            totals[name] += pct
            break
    else:
        rest += pct
print("| where | share of samples |")
print("|---|---|")
for name, _ in groups:
    print(f"| {name} | {totals[name]:.1f}% |")
print(f"| everything else (elementwise ops, reductions, layout changes, ...) | {rest:.1f}% |")
print("\nhottest symbols:")
for pct, sym in rows[:25]:
    print(f"  {pct:5.1f}%  {sym[:140]}")
PY
