#!/usr/bin/env bash
# The full course runs of the sequence chapters (issue 10: §51, §55-§59) on
# the JIT, with their final epoch line, the generations the command prints
# and its wall time: the Markdown table of the README's sequence results.
# Needs a release build (cargo build --release); about 25 minutes on 2 cores.
#
#   bench/sequence_runs.sh > sequence-runs.md
set -euo pipefail
cd "$(dirname "$0")/.."
d2l=target/release/d2l
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

runs=(
  "models/rnn.d2l -m rnn_scratch"
  "models/rnn.d2l -m rnn_scratch_random"
  "models/rnn.d2l -m rnn_concise"
  "models/gru.d2l -m gru_scratch"
  "models/gru.d2l -m gru_concise"
  "models/lstm.d2l -m lstm_scratch"
  "models/lstm.d2l -m lstm_concise"
  "models/lstm.d2l -m lstm_deep"
  "models/lstm.d2l -m lstm_bidirectional"
  "models/sine_mlp.d2l"
)

echo "| command | final epoch | generations / predictions | wall s |"
echo "|---|---|---|---|"
for r in "${runs[@]}"; do
  start=$(date +%s%N)
  # shellcheck disable=SC2086
  log=$("$d2l" train $r --out "$out" 2>&1 | tr '\r' '\n')
  end=$(date +%s%N)
  last=$(printf '%s\n' "$log" | grep '^epoch ' | tail -n 1)
  # What the command prints after training (generations, or the sine
  # MLP's k-step errors), without the repeated final line and the files.
  after=$(printf '%s\n' "$log" | grep -v -e '^epoch ' -e '^training ' -e '^wrote ' -e '^weights ' -e '^perplexity ' -e '^\s*$' | paste -sd ';' -)
  cs=$(( (end - start) / 10000000 ))
  echo "| \`d2l train $r\` | ${last//|/\\|} | ${after//|/\\|} | $((cs / 100)).$(printf '%02d' $((cs % 100))) |"
done
