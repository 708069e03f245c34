"""Rollout precision: sampling speed and distance from the trained policy of an fp32, a bf16 and an int8 copy.

    python benchmarks/bench_rollout_precision.py                 # the cpu-full SFT run, 2 train prompts x 4 samples
    python benchmarks/bench_rollout_precision.py --tiny          # the smoke model (a test runs this so it cannot rot)

The RL rollouts sample from a merged copy of the policy (she_lib.rollouts). This measures, in one process on the
same prompts, for each precision of that copy: new tokens/s of ``inference.generate`` (each prompt prefilled once for
its samples, ``--new-tokens`` forced) and the mean per-token KL(p_fp32 || p_copy) of the next-token distributions
along completions sampled from the fp32 model (teacher-forced). ``int8`` is torch's dynamic quantization of the
decoder layers' linears (per-channel int8 weights, activations quantized per call; the LM head kept fp32). A copy
with a large KL samples from another policy than the one trained, and TRL corrects that only for vLLM.
``--ctranslate2`` adds CTranslate2 copies (``ct2_float32``, ``ct2_int8``, ``ct2_int8_float32``: int8 weights with
per-row scales, activations quantized per call; the last keeps fp32 where int8 is not used), converted from the
same in-memory model (:func:`ctranslate2_copies`; ``conversion_s`` is what a refresh after each optimizer step
would cost), sampled with ``Generator.generate_batch`` (the prompt forwarded at once, ``num_hypotheses`` samples)
and read by ``Generator.forward_batch`` for the KL.
Writes ``results/bench_rollout_precision.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch


def copies(model) -> dict:
    names = {n: torch.ao.quantization.per_channel_dynamic_qconfig for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and "layers." in n}
    return {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16),
            "int8": torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), names, dtype=torch.qint8)}


@torch.no_grad()
def kl_from(reference, model, ids: torch.Tensor, start: int) -> float:
    """Mean over positions >= start of KL(p_reference || p_model) of the next token."""
    lp_ref = torch.log_softmax(reference(ids).logits[0, start - 1:-1].float(), -1)
    lp = torch.log_softmax(model(ids).logits[0, start - 1:-1].float(), -1)
    return float((lp_ref.exp() * (lp_ref - lp)).sum(-1).mean())


def ctranslate2_copies(model, tok, compute_types, threads: int) -> tuple[dict, float]:
    """({"ct2_<type>": Generator}, seconds to convert the in-memory model once per type). The converter reads the
    config and tokenizer from a folder; the weights come from a copy of ``model`` (no save and reload; the converter
    deletes each layer's modules once read)."""
    import tempfile

    import ctranslate2

    class InMemory(ctranslate2.converters.TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            return copy.deepcopy(model)

    tmp = Path(tempfile.mkdtemp(prefix="ct2_"))
    model.config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    gens, t = {}, time.perf_counter()
    for ct in compute_types:
        out = InMemory(str(tmp)).convert(str(tmp / ct), quantization=ct, force=True)
        gens[f"ct2_{ct}"] = ctranslate2.Generator(out, device="cpu", compute_type=ct, intra_threads=threads)
    return gens, (time.perf_counter() - t) / len(compute_types)


def ct2_sample(gen, tok, prompts, samples: int, new_tokens: int) -> list[list[list[int]]]:
    starts = [tok.convert_ids_to_tokens(tok(p, add_special_tokens=False).input_ids) for p in prompts]
    res = gen.generate_batch(starts, num_hypotheses=samples, sampling_topk=0, sampling_temperature=1.0,
                             min_length=new_tokens, max_length=new_tokens, include_prompt_in_result=False)
    return [r.sequences_ids for r in res]


def ct2_kl(reference, gen, ids: list[int], start: int) -> float:
    """:func:`kl_from` with the CTranslate2 generator's log-probabilities."""
    import numpy as np

    with torch.no_grad():
        lp_ref = torch.log_softmax(reference(torch.tensor([ids])).logits[0, start - 1:-1].float(), -1)
    lp = torch.from_numpy(np.array(gen.forward_batch([ids], return_log_probs=True))[0, start - 1:-1]).float()
    return float((lp_ref.exp() * (lp_ref - lp)).sum(-1).mean())


def main(argv=None) -> int:
    from she_lib.config import get_profile
    from she_lib.data import load_splits
    from she_lib.inference import generate
    from she_lib.labels import get_scale
    from she_lib.modeling import load_policy, load_run
    from she_lib.provenance import machine
    from she_lib.schema import render_prompt

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--run", default="runs/cpu-full/sft")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ctranslate2", nargs="*", metavar="TYPE", help="CTranslate2 copies of these compute types "
                    "(none named: float32 int8 int8_float32)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "bench_rollout_precision.json"))
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    prof = get_profile("smoke" if a.tiny else "cpu-full").replace(dtype="float32")
    policy = load_policy(prof) if a.tiny else load_run(a.run, prof)
    tok, models = policy.tokenizer, copies(policy.model.eval())
    rows = load_splits(prof)["train"].head(a.prompts).to_dict("records")
    prompts = [render_prompt(tok, r, get_scale(prof.grade_scale)) for r in rows]
    res = {"machine": machine(), "model": "tiny" if a.tiny else a.run, "threads": torch.get_num_threads(),
           "command": "python benchmarks/bench_rollout_precision.py " + " ".join(argv or sys.argv[1:]),
           "prompts": a.prompts, "samples": a.samples, "new_tokens": a.new_tokens, "precisions": {}}
    torch.manual_seed(1)
    ref = generate(models["float32"], tok, prompts, len(prompts), a.new_tokens, do_sample=True,
                   num_return_sequences=a.samples, progress=False, return_ids=True)
    seqs = [(len(tok(p, add_special_tokens=False).input_ids), tok(p, add_special_tokens=False).input_ids + c)
            for p, group in zip(prompts, ref) for c in group]
    for name, model in models.items():
        torch.manual_seed(0)
        t = time.perf_counter()
        out = generate(model, tok, prompts, len(prompts), a.new_tokens, do_sample=True, num_return_sequences=a.samples,
                       progress=False, return_ids=True, min_new_tokens=a.new_tokens)
        seconds = time.perf_counter() - t
        kl = [kl_from(models["float32"], model, torch.tensor([ids]), start) for start, ids in seqs]
        res["precisions"][name] = {"new_tok_s": round(sum(len(c) for g in out for c in g) / seconds, 1),
                                   "kl_from_fp32_mean": round(sum(kl) / len(kl), 5)}
        print(name, res["precisions"][name], flush=True)
    if a.ctranslate2 is not None:
        gens, res["ct2_conversion_s"] = ctranslate2_copies(models["float32"], tok, a.ctranslate2 or
                                                           ["float32", "int8", "int8_float32"], torch.get_num_threads())
        for name, gen in gens.items():
            t = time.perf_counter()
            out = ct2_sample(gen, tok, prompts, a.samples, a.new_tokens)
            seconds = time.perf_counter() - t
            kl = [ct2_kl(models["float32"], gen, ids, start) for start, ids in seqs]
            res["precisions"][name] = {"new_tok_s": round(sum(len(c) for g in out for c in g) / seconds, 1),
                                       "kl_from_fp32_mean": round(sum(kl) / len(kl), 5)}
            print(name, res["precisions"][name], flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
