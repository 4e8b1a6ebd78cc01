#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and PyTorch: build against PyTorch's bundled LibTorch
# (CUDA), run the model and DMS tests, then a short 1-GPU retrofit smoke run, printing
# tokens/s and peak GPU memory. Usage: scripts/gpu_check.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-cuda}
PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
cmake -S . -B "$BUILD" -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j "$(nproc)"
(cd "$BUILD" && ctest --output-on-failure -R 'Stories260K|HfTiny|Dms|Baselines')
A=${DMS_ASSETS:-$(cd .. && pwd)/shared/assets}
R=$(mktemp -d)
"$BUILD/dms" data prepare --tokenizer "$A/stories260K/tok512.model" \
  --input "$A/tinystories/tinystories_val_prefix.txt" --out "$R/d.h5" --seq-len 512
"$BUILD/dms" retrofit --device cuda --model "$A/stories260K/stories260K.bin" --data "$R/d.h5" \
  --out "$R/run" --window 32 --target-cr 8 --max-steps 50 --micro-batch 8 --lr 3e-3
python3 - "$R/run/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"kd_loss"' in l]
tps = sorted(r["tokens_per_s"] for r in rows)[len(rows) // 2]
print(f"median tokens/s {tps:.0f} over {len(rows)} steps")
PY
nvidia-smi --query-gpu=memory.used,memory.total --format=csv
