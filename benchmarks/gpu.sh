#!/usr/bin/env bash
# The prepared command for a lent GPU machine (torch, torchvision, numpy, pytest preinstalled;
# no Ray/MLflow/DVC, no internet): the GPU tests, then the detector benchmark against
# torchvision (ResNet-50-FPN p2-p6, 800x1333, batch 8, bf16 autocast, peak memory, a one-GPU
# NCCL DDP step). About 3-5 minutes on an H200; logs go to $OUT (or /tmp) as well.
#
#   bash benchmarks/gpu.sh            # from the repository root
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp}"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/detector 2>&1 | tee "$out/gpu_tests.log"
timeout 330 python3 benchmarks/bench_detector.py --device cuda --amp bf16 --backbone resnet50 \
    --fpn-levels 2 3 4 5 6 --sizes 800x1333 --batch 8 --boxes 100 --iters 10 --threads 8 \
    --memory --ddp 2>&1 | tee "$out/gpu_bench.log"
# Batch inference on Ray Data with the replicas sharing the one GPU (evaluate.gpus_per_replica=0.5): needs Ray,
# which the lent machine may lack; then it says so and skips.
if python3 -c "import ray.data, faster_coco_eval" 2>/dev/null; then
    timeout 300 python3 benchmarks/bench_inference.py evaluate --images 2000 --size 256 --device cuda \
        --gpus-per-replica 0.5 2>&1 | tee "$out/gpu_inference.log"
else
    echo "inference benchmark skipped: Ray Data or faster-coco-eval not installed here" | tee "$out/gpu_inference.log"
fi
