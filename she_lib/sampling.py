"""Sampling N rationales per prompt from a policy, and what they say about it: pass@k.

:func:`sample_rationales` draws ``n`` completions per example (temperature sampling, each prompt
prefilled once, see ``inference.generate``), parses them and marks each *good* when it is well formed
and its grade equals the human label. Chunks of prompts are appended to a JSON-lines cache; chunk c
is sampled after ``torch.manual_seed(seed + c)``, so an interrupted run resumes with the samples an
uninterrupted one would have drawn.

:func:`pass_at_k` is the unbiased estimator of Chen et al. (2021, HumanEval): with n samples of an
example of which c are good,

    pass@k = 1 - C(n - c, k) / C(n, k)        (= 1 when n - c < k)

averaged over examples; pass@1 is the mean share of good samples. pass@N - pass@1 is the room that
sampling-based training (DPO on pass@N pairs, GRPO) can try to capture.
"""
from __future__ import annotations

import json
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .distributed import main_process_first
from .inference import generate
from .labels import GradeScale, get_scale
from .schema import parse, render_prompt


def pass_at_k(n_good, n: int, k: int) -> float:
    """Mean unbiased pass@k over examples with ``n_good[i]`` good samples out of ``n`` each."""
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..n={n}, got {k}")
    good = np.asarray(n_good, dtype=int)
    if good.size == 0:
        return float("nan")
    if (good < 0).any() or (good > n).any():
        raise ValueError(f"good counts must lie in 0..{n}")
    return float(np.mean([1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k) for c in good]))


def pass_at_report(samples: pd.DataFrame) -> dict:
    """``{"pass@1": .., ..., "pass@N": .., "n": N, "examples": m}`` from :func:`sample_rationales` output."""
    per = samples.groupby("example_id")["good"].agg(["sum", "count"])
    if per["count"].nunique() != 1:
        raise ValueError("every example needs the same number of samples for pass@k")
    n = int(per["count"].iloc[0])
    return {**{f"pass@{k}": pass_at_k(per["sum"], n, k) for k in range(1, n + 1)}, "n": n, "examples": len(per)}


def label_samples(df: pd.DataFrame, texts: list[list[str]], scale: GradeScale) -> pd.DataFrame:
    """One row per sample: example_id, sample, completion, grade, well_formed, good (= well formed and
    grade == label). Unparsable samples are rows with grade None and good False, never errors."""
    rows = []
    for ex, group in zip(df.to_dict("records"), texts):
        for j, t in enumerate(group):
            p = parse(t, scale)
            rows.append({"example_id": ex["example_id"], "sample": j, "completion": t, "grade": p.grade,
                         "well_formed": p.well_formed, "good": bool(p.well_formed and p.grade == ex["label"])})
    return pd.DataFrame(rows)


def sample_cache(profile, policy_run: str | Path | None, n: int, max_new_tokens: int, temperature: float,
                 top_p: float, batch_size: int, seed: int, tag: str = "") -> Path:
    """The one cache of samples drawn from ``policy_run`` (None: the base model) with these settings:
    ``runs_dir/samples/<run>_<stamp>/<tag>n<n>_t<tokens>_T<temperature>_p<top_p>_b<batch>_s<seed>.jsonl``.
    Every stage sampling the same policy the same way (DPO's pairs, the RL pool's pass rates, the GenRM's policy
    rationales) reads and extends the same file; the stamp changes when the run is retrained. Rows are keyed by
    example id and chunk c of a call is seeded seed + c, so a row first drawn by a call over other prompts was drawn
    at another position: still a sample of the same policy, not bit-identical to a fresh call's."""
    return samples_dir(profile, policy_run) / (
        f"{tag}n{n}_t{max_new_tokens}_T{temperature}_p{top_p}_b{batch_size}_s{seed}.jsonl")


def samples_dir(profile, policy_run: str | Path | None) -> Path:
    """``runs_dir/samples/<run>_<stamp>`` (``base`` for the base model): where every cache read off one policy
    lives (:func:`sample_cache`; the RL pool's first-token pass rates, she_lib.rl)."""
    from .runs import stamp

    folder = f"{Path(policy_run).name}_{stamp(policy_run)}" if policy_run else "base"
    return Path(profile.runs_dir) / "samples" / folder


def cache_covers(cache: str | Path | None, df: pd.DataFrame) -> bool:
    """Every example of ``df`` already has its samples in ``cache``: :func:`sample_rationales` will not touch the
    model, so a caller can skip loading it (pass ``model=None, tokenizer=None``)."""
    if not cache or not Path(cache).exists():
        return False
    have = {json.loads(line)["example_id"] for line in Path(cache).read_text().splitlines() if line.strip()}
    return set(df["example_id"]) <= have


def sample_rationales(model, tokenizer, df: pd.DataFrame, profile, n: int, max_new_tokens: int = 128,
                      temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 8, seed: int = 0,
                      cache: str | Path | None = None, chunk: int = 16, progress: bool = True) -> pd.DataFrame:
    """``n`` sampled rationales for every row of ``df`` (``profile.order`` prompts), labelled; resumable.

    Under ``accelerate launch`` rank 0 samples and writes the cache first; the other ranks then read it (they
    write nothing; without a cache they sample the same chunks with the same seeds)."""
    with main_process_first():
        return _sample_rationales(model, tokenizer, df, profile, n, max_new_tokens, temperature, top_p, batch_size,
                                  seed, cache, chunk, progress)


def _sample_rationales(model, tokenizer, df, profile, n, max_new_tokens, temperature, top_p, batch_size, seed, cache,
                       chunk, progress) -> pd.DataFrame:
    scale = get_scale(profile.grade_scale)
    cache = Path(cache) if cache else None
    done = {}
    if cache and cache.exists():
        for line in cache.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["example_id"]] = r["completions"]
    records = df.to_dict("records")
    bar = tqdm(total=len(records), desc=f"sample x{n}", disable=not progress)
    for c, start in enumerate(range(0, len(records), chunk)):
        rows = records[start:start + chunk]
        if all(r["example_id"] in done for r in rows):
            bar.update(len(rows))
            continue
        torch.manual_seed(seed + c)
        prompts = [render_prompt(tokenizer, r, scale, profile.order) for r in rows]
        out = generate(model, tokenizer, prompts, batch_size, max_new_tokens, do_sample=True,
                       temperature=temperature, top_p=top_p, num_return_sequences=n, progress=False)
        out = [o if isinstance(o, list) else [o] for o in out]
        for r, o in zip(rows, out):
            done[r["example_id"]] = o
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with cache.open("a") as f:
                f.writelines(json.dumps({"example_id": r["example_id"], "completions": o}) + "\n"
                             for r, o in zip(rows, out))
        bar.update(len(rows))
    bar.close()
    return label_samples(df, [done[r["example_id"]] for r in records], scale)
