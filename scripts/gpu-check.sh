#!/usr/bin/env bash
# Everything a GPU machine must run for kto, in one command: the adapter burn sees, log-probs on
# the GPU against transformers on the same GPU (fp32), 20 training steps of a Qwen2.5-0.5B-shaped
# model with kto (Vulkan) and with TRL (CUDA) in each precision, and one large matmul per dtype.
# It runs a kto binary built beforehand (nothing is compiled here) and the Python found here
# (torch, transformers; trl and datasets carried as wheels where missing). Results: OUT/gpu-check.json,
# OUT/gpu-check.md (a short table) and OUT/gpu-check.log (every command's output).
#
#   bash scripts/gpu-check.sh [--cpu] [--bin KTO] [--out DIR] [--python PY] [--device D]
#                             [--steps N] [--require-python] [--setup BUNDLE]
#
# On the GPU machine, after scripts/gpu-bundle.sh on a build machine:
#   bash scripts/gpu-check.sh --setup .gpu --bin .gpu/kto.xz --out "$OUT" --require-python
#
# --cpu: the same steps on the CPU at small sizes (kto on flex, torch on the CPU, a fixture model),
#        so the script is known to work before it meets a GPU; CI runs it.
# --bin: the kto binary (default target/release/kto; a GPU run needs one built with
#        `--features vulkan`, see scripts/gpu-bundle.sh); a `.xz` one is decompressed first.
# --device: kto's device (default vulkan, or flex with --cpu).
# --setup: first unpack BUNDLE/gl/*.deb (the Vulkan and EGL loaders) and install BUNDLE/whl/*.whl
#        into a private site folder put first on PYTHONPATH.
# --require-python: fail, rather than report the step as skipped, when PY lacks torch,
#        transformers or trl (CI has no Python ML stack; a GPU machine must).
# Exit status: non-zero when any step that ran failed.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/precision_modes.sh

cpu=0 bin=target/release/kto out=gpu-check-out python=python3 kdev="" steps="" require=0 setup=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) cpu=1 ;;
    --bin) bin="$2"; shift ;;
    --out) out="$2"; shift ;;
    --python) python="$2"; shift ;;
    --device) kdev="$2"; shift ;;
    --steps) steps="$2"; shift ;;
    --require-python) require=1 ;;
    --setup) setup="$2"; shift ;;
    *) echo "gpu-check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$cpu" = 1 ]; then
  kdev="${kdev:-flex}" tdev=cpu gpu=- steps="${steps:-4}" warmup=1 batch=4 prompt=16 completion=48 matmul=512
  train_model=tests/fixtures/models/tiny-qwen2 logps_models="tiny-qwen2 tiny-llama"
else
  kdev="${kdev:-vulkan}" tdev=cuda gpu=0 steps="${steps:-20}" warmup=2 batch=8 prompt=128 completion=384 matmul=8192
  train_model="" logps_models="tiny-qwen2 tiny-llama 0.5b"
fi
[ -f "$bin" ] || { echo "gpu-check.sh: no kto binary at $bin (--bin)" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/kto-gpu-check.XXXXXX")
case "$bin" in
  *.xz)
    "$python" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$bin" "$work/kto" || { echo "gpu-check.sh: cannot decompress $bin" >&2; exit 2; }
    chmod +x "$work/kto"
    bin="$work/kto" ;;
  *) bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin") ;;
esac
[ -x "$bin" ] || { echo "gpu-check.sh: $bin is not executable" >&2; exit 2; }
log="$out/gpu-check.log"
: >"$log"
steps_dir="$work/steps"
mkdir -p "$steps_dir"
failed=0

say() { echo "== $*" | tee -a "$log"; }
# record NAME JSON: one step's result.
record() { printf '%s\n' "$2" >"$steps_dir/$1.json"; echo "$1" >>"$steps_dir/order"; }
# The last line of a command's stdout that is a JSON object.
last_json() { grep -E '^\{' "$1" | tail -1; }
fail() { record "$1" "{\"status\": \"failed\", \"why\": $(printf '%s' "$2" | "$python" -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}"; failed=1; echo "FAILED: $1: $2" | tee -a "$log"; }
skip() { record "$1" "{\"status\": \"skipped\", \"why\": \"$2\"}"; echo "skipped: $1: $2" | tee -a "$log"; }
ok() { record "$1" "{\"status\": \"ok\", \"result\": $2}"; }

if [ -n "$setup" ]; then
  say "0. setup from $setup"
  for f in "$setup"/gl/*.deb; do [ -e "$f" ] && dpkg -x "$f" /; done
  ldconfig
  # The NVIDIA container toolkit puts the driver's Vulkan and EGL manifests here.
  icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  if [ -f "$icd" ] && [ ! -f /usr/share/vulkan/icd.d/nvidia_icd.json ] && [ ! -f /etc/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES="$icd" __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  fi
  if ls "$setup"/whl/*.whl >/dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/kto-site \
      "$setup"/whl/*.whl >>"$log" 2>&1 || { echo "gpu-check.sh: installing the wheels failed (see $log)" >&2; exit 2; }
    export PYTHONPATH=/tmp/kto-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  "$python" -m pip list 2>/dev/null | grep -i -E "^(torch|transformers|trl|datasets|accelerate|pyarrow) " >>"$log"
fi

have_ml=1 have_trl=1
"$python" -c 'import torch, transformers' >>"$log" 2>&1 || have_ml=0
"$python" -c 'import trl, datasets' >>"$log" 2>&1 || have_trl=0
if [ "$require" = 1 ] && { [ "$have_ml" = 0 ] || [ "$have_trl" = 0 ]; }; then
  echo "gpu-check.sh: $python lacks torch, transformers, trl or datasets (--require-python)" >&2
  exit 2
fi
# Where Python cannot run a step: a failure under --require-python, else reported as skipped.
no_python() { skip "$1" "$python has no $2"; }

say "1. the devices and adapters"
{ uname -a; nproc; command -v nvidia-smi >/dev/null && nvidia-smi -L; } >>"$log" 2>&1
if command -v vulkaninfo >/dev/null; then
  vulkaninfo 2>/dev/null | grep -E "deviceName|apiVersion|driverVersion|VK_KHR_cooperative_matrix|VK_NV_cooperative_matrix2" \
    | sort -u >"$work/vulkaninfo.txt"
  cat "$work/vulkaninfo.txt" >>"$log"
fi
# On the CPU, every compiled-in device (one that is not there is listed as unavailable); on the
# GPU, kto's device and wgpu's default adapter, both required.
probe=(--devices "$kdev,wgpu")
[ "$cpu" = 1 ] && probe=()
if "$bin" devices "${probe[@]}" --matmul "$matmul" --json >"$work/devices.json" 2>>"$log"; then
  ok devices "$(cat "$work/devices.json")"
else
  # A device that is not there still prints its reason; keep it.
  "$bin" devices --matmul 0 --json >"$work/devices.json" 2>>"$log"
  fail devices "kto devices ${probe[*]} failed: $(tail -1 "$log")"
fi
cat "$work/devices.json" >>"$log"

say "2. log-probs against transformers on $tdev (fp32)"
model_of() {
  case "$1" in
    0.5b) echo "$work/model-0.5b" ;;
    *) echo "tests/fixtures/models/$1" ;;
  esac
}
if [ "$have_ml" = 1 ] && [ "$cpu" = 0 ]; then
  "$python" scripts/gpu_check.py model benches/qwen2-0.5b-config.json tests/fixtures/models/tiny-qwen2 \
    "$work/model-0.5b" >>"$log" 2>&1 || fail model "making the 0.5B model failed"
  train_model="$work/model-0.5b"
fi
for name in $logps_models; do
  m=$(model_of "$name")
  [ -d "$m" ] || { fail "logps-$name" "no model at $m"; continue; }
  vocab=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$m/config.json")
  "$python" scripts/gpu_check.py rows "$work/logps-rows.jsonl" 8 24 40 "$vocab" >/dev/null
  if ! "$bin" logps --model "$m" --dataset "$work/logps-rows.jsonl" --device "$kdev" \
      --per-device-train-batch-size 4 --out "$work/logps-$name.jsonl" >>"$log" 2>&1; then
    fail "logps-$name" "kto logps on $kdev failed"
    continue
  fi
  [ "$have_ml" = 1 ] || { no_python "logps-$name" "torch and transformers"; continue; }
  if "$python" scripts/gpu_check.py logps "$m" "$work/logps-$name.jsonl" "$tdev" >"$work/check.out" 2>>"$log"; then
    result=$(last_json "$work/check.out")
    if printf '%s' "$result" | "$python" -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["passed"] else 1)'; then
      ok "logps-$name" "$result"
    else
      record "logps-$name" "{\"status\": \"failed\", \"result\": $result}"; failed=1
      echo "FAILED: logps-$name: $result" | tee -a "$log"
    fi
  else
    fail "logps-$name" "transformers' log-probs failed"
  fi
done

say "3. training: $steps steps, batch $batch of $prompt + $completion tokens, separate reference, AdamW"
if [ -z "$train_model" ]; then
  no_python train "torch and transformers (the 0.5B model is made by transformers)"
else
  vocab=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$train_model/config.json")
  "$python" scripts/gpu_check.py rows "$work/train-rows.jsonl" $(( steps * batch )) "$prompt" "$completion" "$vocab" >/dev/null
  # The precision settings kto devices found the device computes (a bf16 mode on a device that
  # has no bf16 arithmetic is refused by kto train; here it is reported as such).
  accepted=$("$python" -c 'import json,sys
for d in json.load(open(sys.argv[1])):
    if d["device"] == sys.argv[2] and d.get("available"):
        print(" ".join(d["train_precision"]))' "$work/devices.json" "$kdev")
  for mode in $PRECISION_MODES; do
    needs=fp32
    [ "$mode" != fp32 ] && needs=--bf16
    case " $accepted " in
      *" $needs "*) ;;
      *) skip "kto-$mode" "kto devices: $kdev does not compute in ${needs#--} (accepts: ${accepted:-nothing})"; continue ;;
    esac
    precision_flags "$mode"
    run="$work/kto-$mode"
    if "$python" scripts/gpu_check.py measure "$gpu" -- "$bin" train --model "$train_model" --ref-model "$train_model" \
        --dataset "$work/train-rows.jsonl" --device "$kdev" --optim adamw_torch --learning-rate 1e-5 \
        --per-device-train-batch-size "$batch" --max-steps "$steps" --max-length 0 --gradient-checkpointing false \
        --logging-steps 1 --save-steps 0 --output-dir "$run" "${flags[@]}" >"$work/measure.out" 2>>"$log" \
        && [ -f "$run/run_summary.json" ]; then
      ok "kto-$mode" "{\"measure\": $(last_json "$work/measure.out"), \"summary\": $(cat "$run/run_summary.json")}"
    else
      fail "kto-$mode" "kto train $mode on $kdev failed: $(tail -3 "$log" | tr '\n' ' ')"
    fi
  done
  for mode in fp32 bf16; do
    [ "$have_trl" = 1 ] || { no_python "trl-$mode" "trl and datasets"; continue; }
    flags=(--device "$tdev" --batch "$batch")
    [ "$mode" = bf16 ] && flags+=(--bf16)
    if "$python" scripts/gpu_check.py measure "$gpu" -- "$python" scripts/bench_trl_side.py "$train_model" \
        "$work/train-rows.jsonl" $(( steps - warmup )) "$warmup" "$(nproc)" "${flags[@]}" >"$work/measure.out" 2>>"$log"; then
      ok "trl-$mode" "{\"measure\": $(last_json "$work/measure.out"), \"trl\": $(grep -E '^\{' "$work/measure.out" | tail -2 | head -1)}"
    else
      fail "trl-$mode" "TRL $mode on $tdev failed: $(tail -3 "$log" | tr '\n' ' ')"
    fi
  done
fi

say "4. matmul throughput per dtype"
if [ "$have_ml" = 1 ]; then
  if "$python" scripts/gpu_check.py matmul "$tdev" "$matmul" >"$work/check.out" 2>>"$log"; then
    ok torch-matmul "$(last_json "$work/check.out")"
  else
    fail torch-matmul "torch's matmul failed"
  fi
else
  no_python torch-matmul "torch"
fi
# kto's (burn's) matmul per dtype is in step 1's `kto devices --matmul`.

"$python" scripts/gpu_check.py report "$steps_dir" "$out" "$cpu" "$kdev" "$tdev" "$batch" "$prompt" "$completion" "$warmup" \
  >>"$log" 2>&1 || { echo "gpu-check.sh: the report failed (see $log)" >&2; failed=1; }
cat "$out/gpu-check.md" 2>/dev/null
rm -rf "$work"
exit "$failed"
