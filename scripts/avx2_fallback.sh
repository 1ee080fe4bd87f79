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
# Needs qemu-user (apt-get install qemu-user); nothing is downloaded. Emulation is slow: on a
# 2-vCPU machine the Haswell run of the 40M log-probs took over 28 minutes without finishing
# (and without an illegal-instruction fault, so the AVX2 path was the one taken).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/kto}"
other="${2:-}"
work="${TMPDIR:-/tmp}/kto-avx2-fallback"
rm -rf "$work" && mkdir -p "$work"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p kto --example bench_model 2>/dev/null
target/release/examples/bench_model "$work/model" 40m 2>/dev/null
python3 scripts/gpu_check.py rows "$work/data.jsonl" 4 64 128 32000 >/dev/null
logps=(logps --model "$work/model" --dataset "$work/data.jsonl" --device flex --per-device-train-batch-size 4
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
if [ -n "$other" ]; then
  ref=$(run haswell-ref qemu-x86_64 -cpu Haswell "$other")
  echo "haswell-ref  $ref"
  [ "$haswell" = "$ref" ] || { echo "the AVX2 fallback differs from the binary without x86-v4" >&2; exit 1; }
fi
grep -q avx512f /proc/cpuinfo && [ "$native" = "$haswell" ] && echo "note: native and Haswell agree (no AVX-512 path taken?)"
exit 0
