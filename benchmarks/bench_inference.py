"""Inference speed on this machine: fp32 vs bf16 for matmul, generation and first-token scoring;
sampling N rationales per prompt with the prompt prefilled once (``share_prefix``) vs HF's N prefills; and
the batch's common prefix (the chat template's system part) prefilled once (``share_common_prefix``) vs every
prompt prefilled whole, for the first-token read-out, greedy generation and rollouts.

    python benchmarks/bench_inference.py              # SmolLM2-135M-Instruct (the cpu profile)
    python benchmarks/bench_inference.py --tiny       # the smoke model, seconds (kept from rotting by a test)
    python benchmarks/bench_inference.py --prefix-only --threads 1 --out results/bench_prefix_cache.json

The common-prefix comparison runs the variants interleaved (plain, shared, plain, shared, ...; ``--repeats``
rounds after one untimed warm-up round) on the same prompts and dtype and reports medians, their ratios, and
whether the outputs agree (largest probability difference; identical greedy completions and samples), next to
how much the plain path itself moves when the same prompts are batched by a quarter of the batch size (in
bf16 that rounding noise is of the same order as the shared path's difference). The load
average before and after is recorded: on a shared CPU the ratios are what to read, not the absolute figures.

Generation is forced to exactly ``--new-tokens`` new tokens (min_new_tokens) so both dtypes do the same
work; prompts are real test-split prompts. bf16 is measured only where the CPU has fast bf16 (AVX512-BF16 or
AMX; elsewhere PyTorch emulates it and a 2048^2 matmul takes minutes), unless ``--dtypes`` names it. The
sampling comparison draws the same samples both ways (same seed; tested equal in tests/test_dpo.py). Writes ``results/bench_inference.json`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from she_lib.config import get_profile
from she_lib.data import load_splits
from she_lib.provenance import command_line, git_commit, machine
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


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _interleaved(variants: dict, repeats: int) -> tuple[dict, dict]:
    """Median seconds of each variant over ``repeats`` rounds run in turn (one untimed warm-up round first), and
    each variant's output of the last round."""
    times, outs = {k: [] for k in variants}, {}
    for r in range(repeats + 1):
        for name, fn in variants.items():
            s, outs[name] = _timed(fn)
            if r:
                times[name].append(s)
    return {k: statistics.median(v) for k, v in times.items()}, outs


def _times(med: dict, work: int, unit: str, base) -> dict:
    """Median seconds, throughput (``work`` per second) and speed-up over ``base`` of each variant."""
    return {**{f"{k}_s": round(v, 2) for k, v in med.items()},
            **{f"{k}_{unit}": round(work / v, 2) for k, v in med.items()},
            "speedup": {k: round(med[base] / v, 2) for k, v in med.items() if k != base}}


def prefix_sharing(pol, prompts, words, args) -> dict:
    """Plain vs common-prefix-shared, same prompts, same dtype, interleaved: first-token read-out, greedy
    generation (exactly ``--gen-tokens`` new tokens) and rollouts (``--rollout-n`` samples per prompt)."""
    from she_lib.inference import common_prefix_length

    m, tok = pol.model, pol.tokenizer
    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    out = {"prompt_tokens_mean": round(sum(map(len, ids)) / len(ids), 1),
           "common_prefix_tokens": common_prefix_length(ids)}

    ft = prompts[:args.ft_prompts]
    kw = dict(batch_size=args.ft_batch, progress=False)
    med, res = _interleaved({k: (lambda s=s: grade_probabilities(m, tok, ft, words, share_common_prefix=s, **kw))
                             for k, s in (("plain", False), ("shared", True))}, args.repeats)
    out["first_token"] = {"prompts": len(ft), "batch": args.ft_batch, **_times(med, len(ft), "prompts_s", "plain"),
                          "max_abs_prob_diff": float(abs(res["plain"] - res["shared"]).max()),
                          "same_argmax": float((res["plain"].argmax(1) == res["shared"].argmax(1)).mean())}
    # the plain path's own rounding noise: the same prompts in batches of another size (untimed)
    other = grade_probabilities(m, tok, ft, words, share_common_prefix=False, batch_size=max(1, args.ft_batch // 4),
                                progress=False)
    out["first_token"]["plain_other_batch_max_abs_prob_diff"] = float(abs(res["plain"] - other).max())
    print("first_token", out["first_token"], flush=True)

    gp, t = prompts[:args.gen_prompts], args.gen_tokens
    kw = dict(batch_size=args.gen_batch, max_new_tokens=t, min_new_tokens=t, progress=False)
    med, res = _interleaved({k: (lambda s=s: generate(m, tok, gp, share_common_prefix=s, **kw))
                             for k, s in (("plain", False), ("shared", True))}, args.repeats)
    same = sum(a == b for a, b in zip(res["plain"], res["shared"])) / len(gp)
    other = generate(m, tok, gp, share_common_prefix=False, **{**kw, "batch_size": max(1, args.gen_batch // 4)})
    out["greedy_generation"] = {"prompts": len(gp), "batch": args.gen_batch, "new_tokens": t,
                                **_times(med, len(gp) * t, "tok_s", "plain"), "identical_completions": same,
                                "plain_other_batch_identical": sum(map(str.__eq__, res["plain"], other)) / len(gp)}
    print("greedy_generation", out["greedy_generation"], flush=True)

    if args.rollout_n:
        rp, n, t = prompts[:args.rollout_prompts], args.rollout_n, args.rollout_tokens
        kw = dict(batch_size=len(rp), max_new_tokens=t, min_new_tokens=t, do_sample=True, num_return_sequences=n,
                  progress=False)
        settings = {"hf_generate": (False, False), "per_prompt": (True, False), "per_prompt_and_common": (True, True)}

        def rollout(share, common):
            torch.manual_seed(0)
            return generate(m, tok, rp, share_prefix=share, share_common_prefix=common, **kw)

        med, res = _interleaved({k: (lambda v=v: rollout(*v)) for k, v in settings.items()}, args.repeats)
        out["rollouts"] = {"prompts": len(rp), "n": n, "new_tokens": t, **_times(med, len(rp) * n * t, "tok_s",
                                                                                  "hf_generate"),
                           "same_samples": res["hf_generate"] == res["per_prompt"] == res["per_prompt_and_common"]}
        print("rollouts", out["rollouts"], flush=True)
    return out


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
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--prefix-only", action="store_true", help="only the common-prefix comparison (for each dtype)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds of the common-prefix comparison")
    ap.add_argument("--ft-prompts", type=int, default=64)
    ap.add_argument("--ft-batch", type=int, default=32)
    ap.add_argument("--gen-prompts", type=int, default=16)
    ap.add_argument("--gen-batch", type=int, default=16)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--rollout-prompts", type=int, default=8)
    ap.add_argument("--rollout-n", type=int, default=4, help="0 skips the rollout rows")
    ap.add_argument("--rollout-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    dtypes = args.dtypes or ["float32", *(["bfloat16"] if cpu_has_fast_bf16() else [])]
    prof = get_profile("smoke" if args.tiny else "cpu")
    scale = get_scale(prof.grade_scale)
    test = load_splits(prof)["test"]
    rows, shared = {}, {}
    for name in dtypes:
        dtype = getattr(torch, name)
        pol = load_policy(prof.replace(dtype=name))
        prompts = [render_prompt(pol.tokenizer, r, scale, prof.order) for r in test.to_dict("records")]
        print(name, flush=True)
        shared[name] = prefix_sharing(pol, prompts, scale.words, args)
        if args.prefix_only:
            continue
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
    result = {"model": "tiny" if args.tiny else prof.model_name, "machine": machine(), "command": command_line(),
              "commit": git_commit(), "threads": torch.get_num_threads(), "niceness": os.nice(0),
              "load_average_before": load_before}
    if not args.prefix_only:
        sampling = sampling_seconds(pol, prompts[:args.sample_prompts], args.sample_n, args.new_tokens,
                                    args.sample_prompts)
        print("sampling", dtypes[-1], sampling, flush=True)
        result.update(new_tokens=args.new_tokens, results=rows, sampling={"dtype": dtypes[-1], **sampling})
    result["prefix_sharing"] = shared
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if {"float32", "bfloat16"} <= set(rows):
        result["bf16_speedup"] = {k: round(rows["bfloat16"][k] / rows["float32"][k], 2) for k in rows["float32"]}
    name = "bench_prefix_cache.json" if args.prefix_only else "bench_inference.json"
    out = Path(args.out or Path(__file__).resolve().parent.parent / "results" / ("smoke" if args.tiny else "") / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result.get("bf16_speedup", {})))
    return result


if __name__ == "__main__":
    main()
