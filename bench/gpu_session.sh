#!/usr/bin/env bash
# The sparse engine's GPU checks in one command (about 5 minutes on an H100): CUDA correctness of every
# sparse_conv implementation (reference, triton, spconv where it imports) against dense conv3d and each other,
# then the training-step benchmark of all of them beside native spconv (batch 1 and 4; fp32, bf16, fp16), then a
# tuning run of the Triton path (row orders, autotuner).
#
#   bash bench/gpu_session.sh [OUT_DIR]        # logs go to OUT_DIR (default: bench_logs/)
#
# spconv is timed when it imports; to bring it to a machine without internet, pack it here with
# ../shared/tools/spconv_for_device.sh and run `bash .spconv/install.sh && export
# PYTHONPATH=/tmp/spconv_site:$PYTHONPATH` first.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench_logs}"
mkdir -p "$out"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c 'import torch; assert torch.cuda.is_available(), "bench/gpu_session.sh needs CUDA"'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

echo "== CUDA tests: sparse conv (reference, triton, spconv) against dense conv3d and each other"
python3 -m pytest -q -p no:cacheprovider tests/test_sparse_conv.py tests/test_triton_conv.py tests/test_spconv.py \
    tests/test_kernel_maps.py tests/test_mink_unet.py tests/test_sparse_settings.py 2>&1 | tee "$out/tests.txt"

echo "== training step, ours (reference, triton, spconv) vs native spconv"
python3 bench/sparse_unet.py --batch-sizes 1,4 --steps 10 --warmup 3 2>&1 | tee "$out/sparse_unet.txt"

echo "== Triton path: row orders and autotuned tile shapes, batch 4"
python3 bench/sparse_unet.py --conv triton --batch-sizes 4 --dtype fp16,fp32 --row-orders mask,memory \
    --autotune --steps 5 --warmup 4 2>&1 | tee "$out/sparse_unet_tuning.txt"
