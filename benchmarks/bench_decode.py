"""Decoded evaluation's speed (issue 20): greedy rationales for real test prompts, three ways, interleaved.

    python benchmarks/bench_decode.py --prompts 32 --threads 2            # SmolLM2-135M + the cpu-full SFT adapter
    python benchmarks/bench_decode.py --tiny                              # the smoke model (kept working by a test)

Variants (the same prompts, greedy, up to ``--new-tokens`` tokens, stopping at the end token as evaluation does):
* ``plain``: the merged model in fp32, HF ``generate`` on the left-padded batch: every prompt prefilled whole;
* ``sdpa``: the model as she_lib.predictions loads it (bf16 where the CPU has it) through she_lib.inference.generate
  (the batch's common prefix prefilled once) with the SDPA attention it loads with (the project before eager decoding);
* ``project``: the same with generate's default ``attention="auto"`` (eager attention for bf16 on a CPU,
  she_lib.inference.generation_attention).

Rounds run plain, sdpa, project, plain, ... after one untimed warm-up round; medians are reported with
their ratio to ``plain``, the load average before and after (on a shared CPU the ratios are what to read), and how
often each variant's parsed grade equals ``plain``'s. Writes ``results/bench_decode.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    from she_lib.config import get_profile
    from she_lib.data import load_splits
    from she_lib.inference import _encode, generate
    from she_lib.labels import get_scale
    from she_lib.modeling import cpu_has_fast_bf16, load_policy, load_run
    from she_lib.provenance import machine
    from she_lib.schema import parse, render_prompt

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--run", default="runs/cpu-full/sft")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "bench_decode.json"))
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    prof = get_profile("smoke" if a.tiny else "cpu-full")
    fast = "bfloat16" if cpu_has_fast_bf16() and not a.tiny else "float32"
    load = (lambda p: load_policy(p)) if a.tiny else (lambda p: load_run(a.run, p))
    fp32, proj = load(prof.replace(dtype="float32")), load(prof.replace(dtype=fast))
    tok, scale = fp32.tokenizer, get_scale(prof.grade_scale)
    rows = load_splits(prof)["test"].head(a.prompts).to_dict("records")
    prompts = [render_prompt(tok, r, scale, prof.order) for r in rows]
    eos = tok.eos_token_id

    def plain():
        enc = _encode(tok, prompts, fp32.model.device)
        with torch.inference_mode():
            ids = fp32.model.eval().generate(**enc, max_new_tokens=a.new_tokens, do_sample=False,
                                             pad_token_id=tok.pad_token_id, eos_token_id=eos)
        return [_cut(r, eos) for r in ids[:, enc.input_ids.shape[1]:].tolist()]

    def project(attention="auto"):
        return generate(proj.model, tok, prompts, len(prompts), a.new_tokens, progress=False, return_ids=True,
                        attention=attention)

    variants = {"plain": plain, "sdpa": lambda: project(None), "project": project}
    load_before = os.getloadavg()[0]
    times, outs = {k: [] for k in variants}, {}
    for r in range(a.repeats + 1):
        for name, fn in variants.items():
            t = time.perf_counter()
            outs[name] = fn()
            if r:
                times[name].append(time.perf_counter() - t)
    grade = {k: [parse(tok.decode(ids, skip_special_tokens=True), scale).grade for ids in v] for k, v in outs.items()}
    res = {"machine": machine(), "model": "tiny" if a.tiny else a.run, "threads": torch.get_num_threads(),
           "command": "python benchmarks/bench_decode.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "prompts": a.prompts, "max_new_tokens": a.new_tokens, "fast_dtype": fast,
           "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)], "variants": {}}
    base = statistics.median(times["plain"])
    for name in variants:
        s = statistics.median(times[name])
        new = sum(len(c) for c in outs[name])
        res["variants"][name] = {"seconds": round(s, 2), "new_tok_s": round(new / s, 1), "speedup": round(base / s, 2),
                                 "same_grade_as_plain": round(sum(x == y for x, y in zip(grade[name], grade["plain"]))
                                                              / len(prompts), 3)}
        print(name, res["variants"][name], flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    return 0


def _cut(ids: list[int], eos: int) -> list[int]:
    """Token ids up to and including the first end token (the padding after it dropped)."""
    return ids[:ids.index(eos) + 1] if eos in ids else ids


if __name__ == "__main__":
    raise SystemExit(main())
