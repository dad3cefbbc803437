#!/usr/bin/env bash
# Issue 13 part 5, on a machine with an NVIDIA GPU (the H200 lent to some
# sessions: driver, CUDA libraries and PyTorch, but no Rust or LLVM). Build
# here first and carry the binary (LLVM linked in statically) and, for the
# Transformer's sin/cos/pow, libdevice:
#   LLVM_SYS_191_PREFIX=/usr/lib/llvm-19 cargo build --release --features gpu
#   strip target/release/d2l           # 62 MB -> 51 MB (the carry limit is 64 MiB)
#   cp "$D2L_LIBDEVICE" target/libdevice.10.bc
# then run this script there with target/release/d2l and
# target/libdevice.10.bc carried: `bash bench/gpu/run.sh` (figures under $OUT).
# (a) every model's training step and inference on the GPU against the CPU
# interpreter (`bench --verify`, small batch); (b) the speed targets' models
# at the course's batch sizes beside PyTorch CUDA eager.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/d2l-gpu}
mkdir -p "$OUT"
D2L=${D2L:-target/release/d2l}
export D2L_LIBDEVICE=${D2L_LIBDEVICE:-target/libdevice.10.bc}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

status=0
for f in models/*.d2l; do
    for m in $("$D2L" check "$f" | sed -n 's/^.*: model \([a-z0-9_]*\)(.*/\1/p'); do
        echo "== verify $f -m $m"
        timeout 120 "$D2L" bench "$f" -m "$m" --device cuda --verify --batch 2 --steps 3 --seconds 0 \
            --json "$OUT/verify-$m.json" 2>&1 | tail -4 || status=1
    done
done

for f in mlp lenet batchnorm_lenet resnet; do
    echo "== bench $f"
    "$D2L" bench "models/$f.d2l" --device cuda --steps 50 --seconds 2 --json "$OUT/d2l-$f.json" || status=1
done
python3 bench/gpu/torch_cuda.py --out "$OUT/torch-cuda.json" || status=1
exit $status
