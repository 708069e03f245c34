#!/usr/bin/env bash
# The cpu-full RL table (issue 6/7): GRPO, SRPO and AGRL from the cpu-full SFT run, seeds 0 and 1, each evaluated on
# the test split (first token on all 795 pairs, decoding on 8 pairs per query) and merged into results/metrics.json.
# One single-threaded lane (run it beside scripts/cpu_full.sh's lane); every run resumes from its last checkpoint
# and a finished run is reused, so re-running this script continues the table. Log: logs/cpu-full_rl.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 TRL_EXPERIMENTAL_SILENCE=1
PY=.venv/bin/python
mkdir -p logs
until [ -f runs/cpu-full/sft/run.json ]; do sleep 60; done  # the SFT run of scripts/cpu_full.sh
# the examiner: the verifier, plus the GenRM where runs/cpu-full/genrm holds a finished one (python -m she_lib.genrm)
GENRM=(); [ -f runs/cpu-full/genrm/run.json ] && GENRM=(--genrm runs/cpu-full/genrm)
for seed in 0 1; do
  for method in grpo srpo agrl; do
    $PY -m she_lib.rl --method $method --profile cpu-full --sft runs/cpu-full/sft --seed $seed "${GENRM[@]}" \
        --evaluate first_token generate --save
  done
done >> logs/cpu-full_rl.log 2>&1
