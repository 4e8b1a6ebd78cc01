#!/usr/bin/env bash
# Example: a retrofit on N processes of this node with torchrun (PyTorch's launcher).
# torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; `dms retrofit` joins
# the process group from them (NCCL on CUDA builds, Gloo on CPU). Multi-node: run this on
# every node with --nnodes, --node-rank and --rdzv-endpoint/--master-addr as usual.
#   scripts/launch_torchrun.sh 8 --model /models/Qwen3-8B --data data.h5 --out runs/q3 --target-cr 8
set -euo pipefail
NPROC=${1:?usage: launch_torchrun.sh NPROC retrofit-options...}
shift
cd "$(dirname "$0")/.."
exec torchrun --standalone --nproc-per-node "$NPROC" --no-python build/dms retrofit "$@"
