"""SFT training speed: the project's settings against a plain TRL baseline, in one run, same data.

    python benchmarks/bench_sft.py                  # SmolLM2-135M-Instruct, 8 steps of 8 chats each
    python benchmarks/bench_sft.py --tiny --steps 3 # the smoke model (a test runs this so it cannot rot)

Variants (each in its own process, so peak memory is its own):
* ``plain``:     TRL 1.15's SFTConfig defaults on this stack: fp32 compute, gradient checkpointing on,
                 padding to the longest chat of the batch;
* ``unshared``:  bf16 autocast, no gradient checkpointing, padding, every row's prompt computed in full;
* ``optimised``: the project's CPU settings (``she_lib.sft``): as ``unshared``, and the batch's common prompt
                 prefix (the chat template's system part) computed once per batch (``share_prompt_prefix``).
Both train LoRA r16 on all linear layers, the same chats (offline-teacher rationales), the same batch.

Reported per variant: non-padding tokens/s over the steps after the first (warm-up), seconds/step, peak
resident memory, and MFU = 6 * N * tokens/s / peak, with N the base model's parameters (the usual 6N
rule; LoRA skips the frozen weights' gradients, so 4N is the tighter count, also given) and peak the bf16
matmul TFLOP/s measured in this run on this machine. Writes ``results/bench_sft.json``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {"plain": dict(bf16=False, gradient_checkpointing=True, share_prompt_prefix=False),
            "unshared": dict(bf16="auto", gradient_checkpointing=False, share_prompt_prefix=False),
            "optimised": dict(bf16="auto", gradient_checkpointing=False, share_prompt_prefix=True)}


def run_variant(name: str, tiny: bool, steps: int, batch: int) -> dict:
    import torch
    from transformers import TrainerCallback

    from she_lib.config import get_profile
    from she_lib.data import load_splits
    from she_lib.sft import CoTSFTConfig, build_sft_dataset, sft_trainer

    prof = get_profile("smoke" if tiny else "cpu")
    cfg = CoTSFTConfig.for_profile(prof, max_steps=steps, per_device_batch_size=batch, grad_accum=1,
                                   logging_steps=1, save_steps=10 ** 6, eval_limit=None, **VARIANTS[name])
    train = load_splits(prof)["train"].sample(n=steps * batch, random_state=0, replace=True)
    ds = build_sft_dataset(train, prof.grade_scale, cfg.order)

    class Clock(TrainerCallback):  # time and tokens of the steps after the first
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                self.t1, self.tok1 = time.perf_counter(), state.num_input_tokens_seen

        def on_train_end(self, args, state, control, **kw):
            self.seconds, self.tokens = time.perf_counter() - self.t1, state.num_input_tokens_seen - self.tok1

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        trainer = sft_trainer(prof, cfg, ds, out, callbacks=[clock])
        n_params = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" not in n)
        trainer.train()
    return {"tokens_per_s": clock.tokens / clock.seconds, "s_per_step": clock.seconds / (steps - 1),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "base_params": n_params, "bf16": trainer.args.bf16,
            "gradient_checkpointing": trainer.args.gradient_checkpointing,
            "share_prompt_prefix": trainer.share_prompt_prefix, "threads": torch.get_num_threads()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # child process
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.tiny, args.steps, args.batch)))
        return {}
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_inference import matmul_tflops

    import torch

    from she_lib.provenance import machine

    peak = matmul_tflops(torch.bfloat16, 256 if args.tiny else 2048)
    rows = {}
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", name, "--steps", str(args.steps), "--batch", str(args.batch)]
        proc = subprocess.run(cmd + (["--tiny"] if args.tiny else []), capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["mfu_6N"] = 6 * r["base_params"] * r["tokens_per_s"] / (peak * 1e12)
        r["mfu_4N"] = 4 * r["base_params"] * r["tokens_per_s"] / (peak * 1e12)
        rows[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
        print(name, rows[name], flush=True)
    result = {"model": "tiny" if args.tiny else "SmolLM2-135M-Instruct", "machine": machine(),
              "steps": args.steps, "batch": args.batch, "bf16_matmul_peak_tflops": round(peak, 3),
              "variants": rows, "speedup": round(rows["optimised"]["tokens_per_s"] / rows["plain"]["tokens_per_s"], 2),
              "prefix_sharing_speedup": round(rows["optimised"]["tokens_per_s"] / rows["unshared"]["tokens_per_s"], 2),
              "cuda": torch.cuda.is_available()}
    out = Path(args.out or Path(__file__).resolve().parent.parent / "results" / "bench_sft.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("speedup", "bf16_matmul_peak_tflops")}))
    return result


if __name__ == "__main__":
    main()
