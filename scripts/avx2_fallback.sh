#!/usr/bin/env bash
# Does one kto binary serve both kinds of x86-64 CPU? flex's gemm carries AVX-512 kernels
# (burn-flex's `x86-v4`) chosen at run time, with the AVX2/FMA kernels as the fallback. This runs
# the same log-probs (`kto logps`, flex, the 40M bench model, whose gemms are large enough for
# the micro-kernels: the tiny fixtures' are not, and agree either way) three ways and compares
# the outputs byte for byte:
#
#   native        on this CPU (AVX-512 kernels where it has avx512f)
#   haswell       under qemu-user emulating a Haswell (AVX2 and FMA, no AVX-512)
#   haswell-ref   a second binary built without `x86-v4` (OTHER_BIN), also as a Haswell
#
# haswell == haswell-ref says the fallback is the AVX2 path the binary had before; native !=
# haswell (on an AVX-512 CPU) says the AVX-512 kernels were taken natively.
#
#   bash scripts/avx2_fallback.sh [KTO_BIN] [OTHER_BIN]
#
# SKIP_BUILD=1 uses the release binaries already built (while another cargo build holds the
# target dir).
#
# Needs qemu-user (apt-get install qemu-user); nothing is downloaded. Emulation is slow (the
# bench batch of 4 rows of 64 + 128 tokens ran 28 minutes under qemu without finishing), so the
# rows are short by default: ROWS=1 PROMPT=16 COMPLETION=32, still 48-row gemms against the 40M
# model's 512-1408-32000-wide weights, which go through the micro-kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/kto}"
other="${2:-}"
work="${TMPDIR:-/tmp}/kto-avx2-fallback"
rm -rf "$work" && mkdir -p "$work"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p kto --example bench_model 2>/dev/null
target/release/examples/bench_model "$work/model" 40m 2>/dev/null
rows="${ROWS:-1}"
python3 scripts/gpu_check.py rows "$work/data.jsonl" "$rows" "${PROMPT:-16}" "${COMPLETION:-32}" 32000 >/dev/null
logps=(logps --model "$work/model" --dataset "$work/data.jsonl" --device flex --per-device-train-batch-size "$rows"
       --max-length 0)
run() { # name, runner..., binary
  local name=$1; shift
  "$@" "${logps[@]}" --out "$work/$name.jsonl" >"$work/$name.log" 2>&1
  sha256sum "$work/$name.jsonl" | cut -d' ' -f1
}
native=$(run native "$bin")
haswell=$(run haswell qemu-x86_64 -cpu Haswell "$bin")
echo "native       $native"
echo "haswell      $haswell"
python3 - "$work/native.jsonl" "$work/haswell.jsonl" <<'PY'
import json, sys
rows = [[json.loads(l) for l in open(p)] for p in sys.argv[1:]]
worst = 0.0
for a, b in zip(*rows):
    for key, x in a.items():
        if isinstance(x, float):
            worst = max(worst, abs(x - b[key]) / max(abs(x), 1e-12))
print(f"rows {len(rows[0])}, largest relative difference native vs haswell {worst:.2e}")
PY
if [ -n "$other" ]; then
  ref=$(run haswell-ref qemu-x86_64 -cpu Haswell "$other")
  echo "haswell-ref  $ref"
  [ "$haswell" = "$ref" ] || { echo "the AVX2 fallback differs from the binary without x86-v4" >&2; exit 1; }
fi
# Equal outputs are expected: both kernel sets sum each output over k in the same order (they
# differ in how many outputs one instruction holds). Which set ran natively is for perf to say.
if grep -q avx512f /proc/cpuinfo && command -v perf >/dev/null; then
  perf record -q -o "$work/perf.data" -- "$bin" "${logps[@]}" --out "$work/perf.jsonl" >/dev/null 2>&1 || true
  echo "gemm micro-kernels natively:"
  perf report -i "$work/perf.data" --stdio --sort symbol 2>/dev/null | grep -o "gemm_f32::microkernel::[a-z0-9_]*" | sort -u
fi
exit 0
