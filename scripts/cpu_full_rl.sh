#!/usr/bin/env bash
# The cpu-full RL table: GRPO, SRPO and AGRL from the cpu-full SFT run (runs/cpu-full/sft), seeds 0, 1 and 2, each read
# by first token on all pairs of the esci_us test split (results/metrics.json) and of the esci_us_wide test split
# (results/esci_us_wide_test/metrics.json), then decoded on 8 pairs of each esci_us test query (step accuracy, rule
# violations). The prompt set (profile cpu-full: P(gold) at the grade token over 1,024 train pairs, balanced stages)
# is built once first, then two single-threaded lanes share the 2 cores: first GRPO and SRPO from the probe-headed
# start (runs/cpu-full/sft_head, she_lib.probe_head; runs <method>_head_recall_online_explore_lr1e4[_s<seed>]), then
# the rest; first of all, GRPO, SRPO and AGRL from the head read at <grade> only (runs/cpu-full/sft_gradehead,
# she_lib.grade_head; runs <method>_gradehead_recall_online_explore[_s<seed>], agrl_gradehead_explore_half_hint[_s<seed>]).
# Before those, GRPO and SRPO from the same start for 54 steps instead of 18 (runs <method>_gradehead_recall_online_
# explore_steps54). Every run resumes from its last checkpoint,
# a finished run is reused and read-outs resume from their prediction caches, so re-running this script continues
# the table. Logs: logs/cpu-full_rl_{a,b}.log. Examiner: the offline verifier, plus the GenRM when
# GENRM=runs/cpu-full/genrm is set (the same for every run). Runs are named <method>_bal[_half|_explore][_s<seed>]
# (_half: AGRL with half of each flagged group guided, --replace-fraction 0.5; _half_hint: that, the hint the gold
# grade alone, --hint grade; _explore: the grade token sampled over the grades at temperature 2 and the rest with
# min_p 0.05, she_lib.rollouts.GradeTemperature; _recall_explore: that, with the recall-weighted reward of
# she_lib.rewards.recall_weights and batch-scaled rewards; _recall_online_explore_lr1e4: the weights kept at the
# current policy, she_lib.rewards.OnlineRecallWeights, and lr 1e-4).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 TRL_EXPERIMENTAL_SILENCE=1
PY=.venv/bin/python
WIDE=data_samples/esci_us_wide
mkdir -p logs
EXAMINER=(); [ -n "${GENRM:-}" ] && EXAMINER=(--genrm "$GENRM")
EXPLORE=(--grade-temperature 2 --min-p 0.05)
RECALL=(--scale-rewards batch --grade-weighting recall "${EXPLORE[@]}")  # recall-weighted reward, grade explored
ONLINE=(--scale-rewards batch --grade-weighting recall_online "${EXPLORE[@]}" --learning-rate 1e-4)
name() { [ "$2" = 0 ] && echo "$1_bal${3:-}" || echo "$1_bal${3:-}_s$2"; }
wide() {  # wide RUN MODE: the run's read-out on the esci_us_wide test split
  $PY -m she_lib.evaluate --run "$1" --profile cpu-full --data "$WIDE" --split test --mode "$2" --save
}
rl() {  # rl METHOD SEED READ-OUT [VARIANT ARGS...]: train (or reuse) the run, read it on both test splits
  local method=$1 seed=$2 mode=$3 variant=${4:-}
  local extra=("${@:5}")
  [ -n "$variant" ] && extra+=(--name "$(name "$method" "$seed" "$variant")")
  $PY -m she_lib.rl --method "$method" --profile cpu-full --sft runs/cpu-full/sft --seed "$seed" "${EXAMINER[@]}" \
      "${extra[@]}" --evaluate "$mode" --save
  [ "$mode" = first_token ] && wide "runs/cpu-full/$(name "$method" "$seed" "$variant")" first_token
  return 0
}
prompts() {  # prompts SFT_RUN: the prompt set's pass rates, cached beside the SFT run's samples (both lanes read it)
  OMP_NUM_THREADS=2 $PY -c "from she_lib.config import get_profile; from she_lib.rl import rl_prompts, curriculum_for
p = get_profile('cpu-full'); print(rl_prompts(p, '$1', curriculum_for(p), 4, progress=True)[1]['curriculum'])"
}
# the cpu-full SFT run every start is made from (60 steps, ~10 min on 2 cores; a fresh clone has none): deterministic on
# one machine, its sft_gradehead gives the archived wide first-token predictions (634 of 634, |dP| <= 5e-11)
[ -f runs/cpu-full/sft/run.json ] || OMP_NUM_THREADS=2 $PY -m she_lib.sft --profile cpu-full
# the probe-headed start (she_lib.probe_head: the SFT model whose grade rows read its last-layer probe), its read-outs
[ -f runs/cpu-full/sft_head/run.json ] || OMP_NUM_THREADS=2 $PY -m she_lib.probe_head --run runs/cpu-full/sft \
    --profile cpu-full --out runs/cpu-full/sft_head --pairs-per-query 16
OMP_NUM_THREADS=2 $PY -m she_lib.evaluate --run runs/cpu-full/sft_head --profile cpu-full --mode first_token --save
OMP_NUM_THREADS=2 wide runs/cpu-full/sft_head first_token
prompts runs/cpu-full/sft
prompts runs/cpu-full/sft_head
[ -f runs/cpu-full/sft_gradehead/grade_head.safetensors ] || OMP_NUM_THREADS=2 $PY -m she_lib.probe_head \
    --run runs/cpu-full/sft --profile cpu-full --out runs/cpu-full/sft_gradehead --pairs-per-query 16 --position grade
from_start() {  # from_start START METHOD SEED LR [DECODED [STEPS [SUFFIX ARGS...]]]: METHOD with online recall weights
  # (AGRL: half of a flagged group guided by the gold grade) from runs/cpu-full/START, read by first token (and decoded)
  # and on wide; STEPS: that many optimizer steps instead of the profile's 18 (run name suffix _steps<STEPS>); SUFFIX
  # ARGS: further she_lib.rl flags, the run named with _SUFFIX (e.g. genrm --genrm runs/cpu-full/genrm_policy_errors_3ep)
  local start=$1 method=$2 tag=${1#sft_} name modes=(first_token) weights=(--grade-weighting recall_online) steps=()
  local extra=("${@:8}")
  name="${method}_${tag}_recall_online_explore"
  [ "$method" = agrl ] && name="agrl_${tag}_explore_half_hint" && weights=(--replace-fraction 0.5 --hint grade)
  [ "$4" = 1e-4 ] && name="${name}_lr1e4"
  [ -n "${6:-}" ] && name="${name}_steps$6" && steps=(--stage-steps "$6")
  [ -n "${7:-}" ] && name="${name}_$7"
  [ "$3" = 0 ] || name="${name}_s$3"
  [ -n "${5:-}" ] && modes+=(generate)
  $PY -m she_lib.rl --method "$method" --profile cpu-full --sft "runs/cpu-full/$start" --seed "$3" --name "$name" \
      --scale-rewards batch "${weights[@]}" "${EXPLORE[@]}" --learning-rate "$4" "${steps[@]}" "${extra[@]}" \
      --evaluate "${modes[@]}" --save
  wide "runs/cpu-full/$name" first_token
}
# longer runs first: GRPO and SRPO from the grade-position head for 54 steps (3x the profile's), seed 0
from_start sft_gradehead grpo 0 5e-5 decoded 54 >> logs/cpu-full_rl_long_a.log 2>&1 &
from_start sft_gradehead srpo 0 5e-5 decoded 54 >> logs/cpu-full_rl_long_b.log 2>&1 &
wait
# levers on SRPO from the same start: the hybrid examiner (the policy-errors GenRM on the steps the verifier leaves
# undecided; seeds 0-2) and anchors to the start on the 54-step run (KL beta 0.04, then 0.4; the SFT anchor, lambda 1)
(
  for seed in 0 1 2; do
    from_start sft_gradehead srpo "$seed" 5e-5 decoded "" genrm --genrm runs/cpu-full/genrm_policy_errors_3ep
  done
) >> logs/cpu-full_rl_levers_a.log 2>&1 &
(
  from_start sft_gradehead srpo 0 5e-5 decoded 54 kl004 --beta 0.04
  from_start sft_gradehead srpo 0 5e-5 decoded 54 kl04 --beta 0.4
  from_start sft_gradehead srpo 0 5e-5 decoded 54 sft1 --sft-weight 1.0
) >> logs/cpu-full_rl_levers_b.log 2>&1 &
wait
(
  for seed in 0 1 2; do
    from_start sft_gradehead grpo "$seed" 5e-5 decoded; from_start sft_gradehead agrl "$seed" 5e-5 decoded
  done
) >> logs/cpu-full_rl_gradehead_a.log 2>&1 &
(
  for seed in 0 1 2; do from_start sft_gradehead srpo "$seed" 5e-5 decoded; done
) >> logs/cpu-full_rl_gradehead_b.log 2>&1 &
wait
(
  for seed in 0 1 2; do from_start sft_head grpo "$seed" 5e-5; done
  for seed in 0 1 2; do from_start sft_head grpo "$seed" 1e-4; done
) >> logs/cpu-full_rl_head_a.log 2>&1 &
(
  for seed in 0 1 2; do from_start sft_head srpo "$seed" 5e-5; done
  for seed in 0 1 2; do from_start sft_head srpo "$seed" 1e-4; done
) >> logs/cpu-full_rl_head_b.log 2>&1 &
wait
(
  $PY -m she_lib.evaluate --run runs/cpu-full/sft --profile cpu-full --mode first_token --save  # the SFT row
  wide runs/cpu-full/sft first_token
  for seed in 0 1 2; do rl grpo "$seed" first_token _recall_online_explore_lr1e4 "${ONLINE[@]}"; done
  for seed in 0 1 2; do rl grpo "$seed" first_token; rl agrl "$seed" first_token; done
  for seed in 0 1 2; do rl grpo "$seed" first_token _recall_explore "${RECALL[@]}"; done
  for seed in 0 1 2; do rl grpo "$seed" first_token _explore "${EXPLORE[@]}"; done
  $PY -m she_lib.evaluate --run runs/cpu-full/sft --profile cpu-full --mode generate --save
  for seed in 0 1 2; do rl grpo "$seed" generate; rl agrl "$seed" generate; done
) >> logs/cpu-full_rl_a.log 2>&1 &
(
  for seed in 0 1 2; do rl agrl "$seed" first_token _half_hint --replace-fraction 0.5 --hint grade; done
  for seed in 0 1 2; do rl srpo "$seed" first_token _recall_online_explore_lr1e4 "${ONLINE[@]}"; done
  for seed in 0 1 2; do rl srpo "$seed" first_token; done
  for seed in 0 1 2; do rl agrl "$seed" first_token _half --replace-fraction 0.5; done  # half of a flagged group guided
  for seed in 0 1 2; do rl srpo "$seed" first_token _recall_explore "${RECALL[@]}"; done
  for seed in 0 1 2; do rl srpo "$seed" first_token _explore "${EXPLORE[@]}"; done
  for seed in 0 1 2; do rl srpo "$seed" generate; done
) >> logs/cpu-full_rl_b.log 2>&1 &
wait
