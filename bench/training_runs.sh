#!/usr/bin/env bash
# The full training runs of the course's chapters 3-4 (issue 3), each on the
# JIT and on the interpreter, with their final line and wall time: a
# Markdown table for the README. Needs a release build (cargo build --release).
#
#   bench/training_runs.sh [--jit-only] > runs.md
set -euo pipefail
cd "$(dirname "$0")/.."
d2l=target/release/d2l
backends=(jit interp)
[ "${1:-}" = --jit-only ] && backends=(jit)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

runs=(
  "models/linear_regression.d2l"
  "models/linear_regression.d2l -m linear_regression_concise"
  "models/softmax_regression.d2l"
  "models/softmax_regression.d2l -m softmax_regression_concise"
  "models/mlp.d2l --seed 0"
  "models/mlp.d2l --seed 1"
  "models/mlp.d2l --seed 2"
  "models/mlp.d2l -m mlp_scratch"
  "models/mlp.d2l -m mlp_dropout --seed 0"
  "models/mlp.d2l -m mlp_dropout --seed 1"
  "models/mlp.d2l -m mlp_dropout --seed 2"
  "models/mlp.d2l -m mlp_dropout --seed 3"
  "models/mlp.d2l -m mlp_dropout --seed 4"
  "models/mlp.d2l -m mlp_dropout --seed 5"
  "models/weight_decay.d2l -m weight_decay_none"
  "models/weight_decay.d2l -m weight_decay"
  "models/house_prices.d2l --seed 0"
  "models/house_prices.d2l --seed 1"
  "models/house_prices.d2l --seed 2"
  "models/house_prices.d2l --seed 3"
  "models/house_prices.d2l --seed 4"
  "models/house_prices.d2l --seed 5"
  "models/house_prices.d2l --seed 6"
  "models/house_prices.d2l --seed 7"
  "models/house_prices.d2l --seed 8"
  "models/house_prices.d2l --seed 9"
  "models/house_prices.d2l -m house_prices_tuned --seed 0"
)

header="| command |"
rule="|---|"
for b in "${backends[@]}"; do header+=" $b: result | $b: wall s |"; rule+="---|---|"; done
echo "$header"
echo "$rule"
for r in "${runs[@]}"; do
  row="| \`d2l train $r\` |"
  for b in "${backends[@]}"; do
    start=$(date +%s%N)
    # shellcheck disable=SC2086
    log=$("$d2l" train $r --backend "$b" --out "$out" 2>&1 | tr '\r' '\n')
    end=$(date +%s%N)
    # The summary: the lines after the last epoch's, minus the files written.
    summary=$(printf '%s\n' "$log" | grep -v '^wrote ' | grep -v '^epoch ' | grep -v '^fold .*epoch' | grep -v '^\s*$' | tail -n 2 | paste -sd ';' -)
    cs=$(( (end - start) / 10000000 ))
    row+=" ${summary//|/\\|} | $((cs / 100)).$(printf '%02d' $((cs % 100))) |"
  done
  echo "$row"
done
