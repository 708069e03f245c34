#!/usr/bin/env bash
# The cpu-full results table, in two single-threaded lanes that share the 2 cores (one OpenMP thread per
# process: two 2-thread jobs on 2 cores spin-wait on each other and run several times slower). Every
# stage resumes where it stopped (trainer checkpoints, JSON-lines caches of samples and predictions) and a
# finished stage is reused, so re-running this script after an interruption continues the work.
#   lane A: CoT SFT grade_first -> test split (first token + decoding) -> DPO on pass@N pairs -> test split
#   lane B: CoT SFT steps_first -> test split (decoding) -> GenRM (samples the SFT run)
# Logs: logs/cpu-full_lane_{a,b}.log. Results: results/metrics.json, results/summary.md, results/figures/.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
PY=.venv/bin/python
mkdir -p logs
(
  $PY -m she_lib.sft --profile cpu-full --name sft --evaluate first_token generate --save
  $PY -m she_lib.dpo --profile cpu-full --sft runs/cpu-full/sft --evaluate first_token generate --save
) > logs/cpu-full_lane_a.log 2>&1 &
(
  $PY -m she_lib.sft --profile cpu-full --order steps_first --name sft_steps_first --evaluate generate --save
  $PY -m she_lib.genrm --profile cpu-full
) > logs/cpu-full_lane_b.log 2>&1 &
wait
