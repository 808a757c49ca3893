#!/usr/bin/env bash
# Issue 12's inference table on this machine: effnet's prepared network (its own SIMD
# level and EFFNET_SIMD=avx2) against timm's efficientnet_b0 in ONNX Runtime and
# OpenVINO, and b0_g16_bn against b0_g16_lnpn, interleaved case by case, ROUNDS rounds;
# prints one JSON line per measurement (keep the fastest of each side).
#
#   PY=/path/to/venv/bin/python benches/infer_peers.sh [ROUNDS] [BIN]
# PY needs torch, timm, onnx, onnxruntime, openvino (outside the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
bin=${2:-target/release/effnet}
py=${PY:-python3}
[ "$bin" = target/release/effnet ] && cargo build --release -q
for round in $(seq "$rounds"); do
  for res in 160 224; do
    for batch in 1 16; do
      "$bin" bench model --res "$res" --batch "$batch" --modes infer --iters 8 --json | sed 's/}$/, "simd": "native"}/'
      EFFNET_SIMD=avx2 "$bin" bench model --res "$res" --batch "$batch" --modes infer --iters 8 --json | sed 's/}$/, "simd": "avx2"}/'
      "$py" benches/peers/infer_peers.py --res "$res" --batch "$batch" --threads 2 2>/dev/null | grep '^{'
    done
    for arch in b0_g16_bn b0_g16_lnpn; do
      "$bin" bench model --arch "$arch" --res "$res" --batch 16 --modes infer --iters 4 --json | sed 's/}$/, "simd": "native"}/'
      EFFNET_SIMD=avx2 "$bin" bench model --arch "$arch" --res "$res" --batch 16 --modes infer --iters 4 --json | sed 's/}$/, "simd": "avx2"}/'
    done
  done
done
