# Sourced by scripts/precision_memory.sh and scripts/gpu-check.sh: the `kto train` precision
# modes they compare, and `precision_flags MODE`, which sets the array `flags` to MODE's flags.
PRECISION_MODES="fp32 bf16 bf16-weights bf16-weights+moments"
precision_flags() {
  case "$1" in
    fp32) flags=() ;;
    bf16) flags=(--bf16) ;;
    bf16-weights) flags=(--bf16-weights) ;;
    bf16-weights+moments) flags=(--bf16-weights --bf16-moments) ;;
    *) echo "unknown precision mode $1 (one of: $PRECISION_MODES)" >&2; return 2 ;;
  esac
}
