#!/usr/bin/env bash
# One call on a GPU machine: versions, the parity suite's GPU subset, then the GPU benchmark
# rows that matter, all into one output folder. Runs from the repository root with the
# machine's own python3 (or $PYTHON), installs nothing, stops at the first failing step,
# and prints each command before it runs. Each step has a time limit; together they fit
# in 9.5 minutes, plus 150 s for the context-parallel step (mesh-seq2: the train step with
# the sequence split over 2 GPUs, ring and all-gather), which runs only where more than one
# GPU is visible to both torch and jax. The ModernBERT-base rows: its windowed layers on our
# flash backend against fused attention (which masks the full square), both frameworks,
# bfloat16, compiled forward at T=2048 and 8192. The peer rows: transformers' BertModel
# (sdpa) against ours in PyTorch, and keras-hub's BertBackbone on JAX against ours in JAX,
# bfloat16, compiled.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR]
#
# --dry-run prints the plan and runs nothing. Without a GPU visible to both torch and jax,
# the GPU steps are skipped with that reason (exit 0), after the versions are recorded.
set -euo pipefail

PY="${PYTHON:-python3}"
OUT="bench-out/gpu-check"
DRY_RUN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT="$2"; shift ;;
        *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done

# name | time limit (s) | command
STEPS=(
    "versions|30|$PY -m benchmarks.versions"
    "parity-gpu|150|$PY -m pytest parity_tests/test_parity.py parity_tests/test_flash.py parity_tests/test_masked_keys.py --device gpu -q -x -p no:cacheprovider -k 'fused or flash or bfloat16 or float32'"
    "bert-base-bf16-sweep|130|$PY -m benchmarks --device gpu --suite standard --dtype bfloat16 --variants ours-math,ours-fused,ours-flash --phases forward,train_step --modes compiled --seq-lens 512,2048 --repeats 5 --no-plots --out $OUT/bert-base-bf16"
    "bert-large-bf16-train-step|75|$PY -m benchmarks --device gpu --suite standard --config bert-large --dtype bfloat16 --variants ours-fused --phases train_step --modes compiled --batch 32 --seq-lens 512 --repeats 5 --no-plots --out $OUT/bert-large-bf16"
    "modernbert-base-bf16|80|$PY -m benchmarks --device gpu --suite standard --config modernbert-base --dtype bfloat16 --variants ours-fused,ours-flash --phases forward --modes compiled --seq-lens 2048,8192 --repeats 5 --no-plots --out $OUT/modernbert-base-bf16"
    "mesh-seq2|150|$PY -m benchmarks --device gpu --suite mesh --mesh seq=2 --mesh seq=2,context=all_gather --repeats 5 --no-plots --out $OUT/mesh-seq2"
    "peers-bf16|105|$PY -m benchmarks --device gpu --suite peers --dtype bfloat16 --frameworks torch --variants ours-fused,hf --phases forward,train_step --modes compiled --seq-lens 512 --repeats 5 --no-plots --out $OUT/peers-bf16-torch && $PY -m benchmarks --device gpu --suite peers --dtype bfloat16 --frameworks jax --variants ours-fused,keras --phases forward,train_step --modes compiled --seq-lens 512 --repeats 5 --no-plots --out $OUT/peers-bf16-jax"
)

echo "gpu_check: output folder $OUT; python: $PY"
for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$step"
    echo "plan: [$name] (limit ${limit}s) $cmd"
done
if [ "$DRY_RUN" = 1 ]; then
    echo "dry run: nothing ran"
    exit 0
fi

mkdir -p "$OUT"
has_gpu() {
    $PY - <<'EOF'
import sys
try:
    import jax
    import torch
except ImportError as e:
    sys.exit(f"missing package: {e.name}")
ok = torch.cuda.is_available() and any(d.platform == "gpu" for d in jax.devices())
sys.exit(0 if ok else "torch.cuda.is_available() or jax.devices() shows no GPU")
EOF
}
has_gpus() {  # more than one GPU, for the mesh steps
    $PY - <<'EOF'
import sys
import jax
import torch
n = min(torch.cuda.device_count(), sum(d.platform == "gpu" for d in jax.devices()))
sys.exit(0 if n > 1 else f"needs more than one GPU, got {n}")
EOF
}

for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$step"
    if [ "$name" != versions ] && ! reason=$(has_gpu 2>&1); then
        echo "skip: [$name] $reason" | tee -a "$OUT/skipped.txt"
        continue
    fi
    if [ "${name#mesh-}" != "$name" ] && ! reason=$(has_gpus 2>&1); then
        echo "skip: [$name] $reason" | tee -a "$OUT/skipped.txt"
        continue
    fi
    echo "run: [$name] $cmd"
    if ! timeout "$limit" bash -c "$cmd" >"$OUT/$name.log" 2>&1; then
        tail -n 40 "$OUT/$name.log"
        echo "FAILED: [$name] (log: $OUT/$name.log)" >&2
        exit 1
    fi
    tail -n 5 "$OUT/$name.log"
done
echo "gpu_check: done; results and logs in $OUT"
