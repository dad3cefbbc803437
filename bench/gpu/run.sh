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
# In order of what matters most if the time runs out (BUDGET seconds):
#  1. the speed targets' models (MLP, LeNet, batch-norm LeNet, ResNet-18):
#     one step on the GPU against the CPU interpreter (`bench --verify`,
#     batch 2), then their timing at the course's batch sizes;
#  2. PyTorch CUDA eager on the same models (bench/gpu/torch_cuda.py);
#  3. every other model of models/ verified the same way.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/d2l-gpu}
BUDGET=${BUDGET:-480}
mkdir -p "$OUT"
D2L=${D2L:-target/release/d2l}
# Where graphs run; `WHERE="--backend grid"` rehearses the script on a CPU.
WHERE=${WHERE:---device cuda}
export D2L_LIBDEVICE=${D2L_LIBDEVICE:-target/libdevice.10.bc}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

status=0
verify() { # FILE MODEL
    echo "== verify $1 -m $2"
    timeout 120 "$D2L" bench "$1" -m "$2" $WHERE --verify --batch 2 --steps 3 --seconds 0 \
        --json "$OUT/verify-$2.json" 2>&1 | tail -4 || status=1
}

targets=${TARGETS:-"mlp:mlp lenet:lenet batchnorm_lenet:batchnorm_lenet resnet:resnet18"}
for t in $targets; do
    verify "models/${t%%:*}.d2l" "${t##*:}"
done
for t in $targets; do
    echo "== bench ${t##*:}"
    "$D2L" bench "models/${t%%:*}.d2l" -m "${t##*:}" $WHERE ${BATCH:+--batch $BATCH} --steps 50 --seconds 2 --json "$OUT/d2l-${t##*:}.json" || status=1
done
python3 bench/gpu/torch_cuda.py --out "$OUT/torch-cuda.json" || status=1

# The big networks last: their interpreter runs take a minute or more.
big=" alexnet vgg11 googlenet nin bert bert_weighted "
for pass in small big; do
    for f in models/*.d2l; do
        for m in $("$D2L" check "$f" | sed -n 's/^.*: model \([a-z0-9_]*\)(.*/\1/p'); do
            case " $targets " in *":$m "*) continue ;; esac
            case "$big" in *" $m "*) [ $pass = big ] || continue ;; *) [ $pass = small ] || continue ;; esac
            if [ "$SECONDS" -ge "$BUDGET" ]; then
                echo "== out of time before $f -m $m"
                exit 1
            fi
            verify "$f" "$m"
        done
    done
done
exit $status
