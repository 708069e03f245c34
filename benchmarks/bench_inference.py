"""Inference speed on this machine: fp32 vs bf16 for matmul, generation and first-token scoring; and
sampling N rationales per prompt with the prompt prefilled once (``share_prefix``) vs HF's N prefills.

    python benchmarks/bench_inference.py              # SmolLM2-135M-Instruct (the cpu profile)
    python benchmarks/bench_inference.py --tiny       # the smoke model, seconds (kept from rotting by a test)

Generation is forced to exactly ``--new-tokens`` new tokens (min_new_tokens) so both dtypes do the same
work; prompts are real test-split prompts. bf16 is measured only where the CPU has fast bf16 (AVX512-BF16 or
AMX; elsewhere PyTorch emulates it and a 2048^2 matmul takes minutes), unless ``--dtypes`` names it. The
sampling comparison draws the same samples both ways (same seed; tested equal in tests/test_dpo.py). Writes ``results/bench_inference.json`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from she_lib.config import get_profile
from she_lib.data import load_splits
from she_lib.provenance import machine
from she_lib.inference import generate, grade_probabilities
from she_lib.labels import get_scale
from she_lib.modeling import cpu_has_fast_bf16, load_policy
from she_lib.schema import render_prompt


def matmul_tflops(dtype, n: int, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


@torch.inference_mode()
def gen_tokens_per_s(model, tok, prompts, new_tokens: int) -> float:
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    model.generate(**enc, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
    t0 = time.perf_counter()
    model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   pad_token_id=tok.pad_token_id)
    return len(prompts) * new_tokens / (time.perf_counter() - t0)


def sampling_seconds(pol, prompts, n: int, new_tokens: int, batch: int) -> dict:
    """Wall time of sampling ``n`` completions per prompt, prefix shared vs not (same seed, same samples)."""
    out = {}
    for share in (False, True):
        torch.manual_seed(0)
        t0 = time.perf_counter()
        generate(pol.model, pol.tokenizer, prompts, batch, new_tokens, do_sample=True, num_return_sequences=n,
                 progress=False, share_prefix=share)
        out["shared_prefix_s" if share else "plain_s"] = round(time.perf_counter() - t0, 2)
    return {"n": n, "prompts": len(prompts), "max_new_tokens": new_tokens, **out,
            "speedup": round(out["plain_s"] / out["shared_prefix_s"], 2)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[8, 32])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--matmul", type=int, default=2048)
    ap.add_argument("--dtypes", nargs="*", default=None, help="default: float32, and bfloat16 where it is fast")
    ap.add_argument("--sample-n", type=int, default=4, help="samples per prompt in the sampling comparison")
    ap.add_argument("--sample-prompts", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dtypes = args.dtypes or ["float32", *(["bfloat16"] if cpu_has_fast_bf16() else [])]
    prof = get_profile("smoke" if args.tiny else "cpu")
    scale = get_scale(prof.grade_scale)
    test = load_splits(prof)["test"]
    rows = {}
    for name in dtypes:
        dtype = getattr(torch, name)
        pol = load_policy(prof.replace(dtype=name))
        prompts = [render_prompt(pol.tokenizer, r, scale, prof.order) for r in test.to_dict("records")]
        r = {"matmul_tflops": round(matmul_tflops(dtype, args.matmul), 3)}
        for bs in args.batch_sizes:
            r[f"generate_tok_s_bs{bs}"] = round(gen_tokens_per_s(pol.model, pol.tokenizer, prompts[:bs],
                                                                 args.new_tokens), 1)
        n = max(args.batch_sizes)
        t0 = time.perf_counter()
        grade_probabilities(pol.model, pol.tokenizer, prompts[:n], scale.words, batch_size=n, progress=False)
        r["first_token_prompts_s"] = round(n / (time.perf_counter() - t0), 1)
        rows[name] = r
        print(name, r, flush=True)
    sampling = sampling_seconds(pol, prompts[:args.sample_prompts], args.sample_n, args.new_tokens, args.sample_prompts)
    print("sampling", dtypes[-1], sampling, flush=True)
    result = {"model": "tiny" if args.tiny else prof.model_name, "machine": machine(),
              "threads": torch.get_num_threads(), "new_tokens": args.new_tokens, "results": rows,
              "sampling": {"dtype": dtypes[-1], **sampling}}
    if {"float32", "bfloat16"} <= set(rows):
        result["bf16_speedup"] = {k: round(rows["bfloat16"][k] / rows["float32"][k], 2) for k in rows["float32"]}
    out = Path(args.out or Path(__file__).resolve().parent.parent / "results" /
               ("smoke" if args.tiny else "") / "bench_inference.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result.get("bf16_speedup", {})))
    return result


if __name__ == "__main__":
    main()
