#!/usr/bin/env bash
# The cpu-full RL table: GRPO, SRPO and AGRL from the cpu-full SFT run, seeds 0 and 1, evaluated on the
# test split and merged into results/metrics.json. Two single-threaded lanes share the 2 cores (one OpenMP thread per
# process). Every run resumes from its last checkpoint, a finished run is reused and evaluations resume from their
# prediction caches, so re-running this script continues the table. Logs: logs/cpu-full_rl_{a,b}.log.
# Cost per run on the 2-core AVX2 machine: ~20-30 min of training (12 steps x G=4 x 2 prompts), ~25 min for the
# first-token read-out of all 795 test pairs, ~17 min to decode 144 (8 per query). Seed 1 is read by first token
# (accuracy and macro-F1 on all 795 pairs) first; its decoded read-out (step accuracy, rule violations) comes last.
# Examiner: the offline verifier, plus the GenRM when GENRM=runs/cpu-full/genrm is set (the same for every run).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 TRL_EXPERIMENTAL_SILENCE=1
PY=.venv/bin/python
mkdir -p logs
until [ -f runs/cpu-full/sft/run.json ]; do sleep 60; done  # the SFT run of scripts/cpu_full.sh
EXAMINER=(); [ -n "${GENRM:-}" ] && EXAMINER=(--genrm "$GENRM")
rl() {  # rl METHOD SEED READ-OUTS...
  local method=$1 seed=$2; shift 2
  $PY -m she_lib.rl --method "$method" --profile cpu-full --sft runs/cpu-full/sft --seed "$seed" "${EXAMINER[@]}" \
      --evaluate "$@" --save
}
(
  rl grpo 0 first_token generate
  rl srpo 0 first_token generate
  rl srpo 1 first_token
  rl srpo 1 first_token generate
) >> logs/cpu-full_rl_a.log 2>&1 &
(
  rl grpo 1 first_token
  rl agrl 0 first_token generate
  rl grpo 1 first_token generate
  rl agrl 1 first_token generate
) >> logs/cpu-full_rl_b.log 2>&1 &
wait
