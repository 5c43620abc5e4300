#!/usr/bin/env bash
# wit-train vs open_clip's trainer on one GPU: ViT-B-32, bf16, same shards, batch and steps.
#
# Usage (from the repository root, on a machine with a CUDA GPU and the .venv):
#   bash bench/gpu_train_compare.sh [SHARDS] [BATCH] [STEPS]
# SHARDS defaults to synthetic 224px shards written under $WORK; nothing is downloaded.
# Prints the table of bench/bench_train.py, plus the GPU name and peak memory of each run.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PY:-.venv/bin/python}"
WORK="${WORK:-${OUT:-/tmp}/gpu_train_compare}"
BATCH="${2:-256}"
STEPS="${3:-120}"
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONPATH="$ROOT"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'

mkdir -p "$WORK"
if [[ $# -ge 1 && -n "$1" ]]; then
  SHARDS="$1"
else
  # synthetic shards at 256px, enough for STEPS x BATCH samples
  SHARDS="$("$PY" - "$WORK/data" "$((BATCH * STEPS))" <<'EOF'
import pathlib, sys
sys.path.insert(0, ".")
from bench.bench_train import write_synthetic_shards
print(write_synthetic_shards(pathlib.Path(sys.argv[1]), int(sys.argv[2]), 4096, 256))
EOF
)"
fi
echo "shards: $SHARDS"

"$PY" bench/bench_train.py --shards "$SHARDS" --model ViT-B-32 --precision bf16 \
  --device cuda --batch-size "$BATCH" --steps "$STEPS" --workers 8 --log-every 20 \
  --keep "$WORK/run" | tee "$WORK/table.md"
