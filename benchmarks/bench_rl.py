"""RL step speed: the project's GRPO settings against TRL's GRPOConfig defaults, in one run, same prompts.

    python benchmarks/bench_rl.py                      # SmolLM2-135M-Instruct, 3 steps of 2 prompts x 4 rollouts
    python benchmarks/bench_rl.py --tiny --steps 2     # the smoke model (a test runs this so it cannot rot)

Variants (each in its own process, so peak memory is its own; TRL's ``GRPOTrainer`` with the outcome reward):
* ``trl_defaults``: what TRL 1.15's GRPOConfig gives on this stack when only the batch is set: bf16 autocast
                    (emulated, and slow, on a CPU without AVX512-BF16/AMX), gradient checkpointing on, TRL's own
                    ``generate`` on the training model, every row's prompt in the loss;
* ``project``:      ``she_lib.rl.rl_config`` with TRL's own ``generate`` and loss (``rollout_engine="trl"``,
                    ``share_prompt_prefix=False``): bf16 only where the CPU has it (else fp32), no gradient
                    checkpointing, no reference model (beta 0);
* ``optimised``:    ``she_lib.rl.rl_config`` as it is: as ``project``, with rollouts from she_lib.rollouts (a merged
                    copy of the policy in the training precision, each prompt prefilled once for its G samples) and
                    each group's prompt run once in the loss (she_lib.prompt_sharing).
Same prompts, rollouts (G), completion budget, seed. Reported per variant, over the steps after the first (warm-up):
seconds per step, generation seconds per step (TRL's ``_generate``), rollout tokens/s (completion tokens generated /
generation seconds), completion tokens/s (completion tokens / total step time), peak resident memory. A variant that
does not finish within ``--timeout`` seconds is reported as such (a lower bound on its time). Writes
``results/bench_rl.json``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

PLAIN = dict(rollout_engine="trl", share_prompt_prefix=False)  # TRL's own generation and loss
VARIANTS = {"trl_defaults": dict(bf16=True, gradient_checkpointing=True, **PLAIN), "project": PLAIN, "optimised": {}}


def run_variant(name: str, tiny: bool, steps: int, prompts: int, g: int, tokens: int) -> dict:
    import tempfile

    from transformers import TrainerCallback

    from she_lib.config import get_profile
    from she_lib.data import load_splits
    from she_lib.labels import get_scale
    from she_lib.modeling import load_policy
    from she_lib.prompt_sharing import SharedPromptGRPOTrainer
    from she_lib.rl import rl_config, rl_dataset
    from she_lib.rewards import OutcomeReward
    from she_lib.rollouts import rollout_func_for
    from she_lib.trl_compat import ensure_trl_cpu_support

    prof = get_profile("smoke" if tiny else "cpu")
    train = load_splits(prof)["train"].sample(n=steps * prompts, random_state=0, replace=True)
    ensure_trl_cpu_support()
    policy = load_policy(prof.replace(dtype="float32"))
    clock = {"gen": []}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                self.t1, self.g1 = time.perf_counter(), sum(clock["gen"])

        def on_train_end(self, args, state, control, **kw):
            self.seconds, self.gen = time.perf_counter() - self.t1, sum(clock["gen"]) - self.g1

    c = Clock()
    with tempfile.TemporaryDirectory() as out:
        args = rl_config(prof, "grpo", out, num_generations=g, prompts_per_step=prompts, max_completion_length=tokens,
                         max_steps=steps, logging_steps=1, save_steps=10 ** 6, vllm="off", **VARIANTS[name])
        trainer = SharedPromptGRPOTrainer(model=policy.model, reward_funcs=[OutcomeReward(prof.grade_scale)],
                                          args=args, train_dataset=rl_dataset(train, prof),
                                          processing_class=policy.tokenizer, peft_config=policy.lora_config,
                                          callbacks=[c], rollout_func=rollout_func_for(args, policy.model))
        generate = trainer._generate

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return generate(*a, **kw)
            finally:
                clock["gen"].append(time.perf_counter() - t)

        trainer._generate = timed
        trainer.train()
        log = [e for e in trainer.state.log_history if "completions/mean_length" in e]
    completion_tokens = sum(e["completions/mean_length"] * g * prompts for e in log[1:])
    return {"s_per_step": c.seconds / (steps - 1), "generate_s_per_step": c.gen / (steps - 1),
            "completion_tok_s": completion_tokens / c.seconds, "rollout_tok_s": completion_tokens / c.gen,
            "rollout_engine": trainer.args.rollout_engine,
            "share_prompt_prefix": trainer.args.share_prompt_prefix, "mean_completion_tokens":
                sum(e["completions/mean_length"] for e in log[1:]) / max(len(log) - 1, 1),
            "bf16": trainer.args.bf16, "gradient_checkpointing": trainer.args.gradient_checkpointing,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "results" / "bench_rl.json"))
    a = ap.parse_args(argv)
    if a.steps < 2:
        ap.error("--steps must be >= 2 (the first step is warm-up)")
    if a.variant:  # child process
        print(json.dumps(run_variant(a.variant, a.tiny, a.steps, a.prompts, a.generations, a.tokens)))
        return 0
    from she_lib.provenance import machine

    res = {"machine": machine(), "model": "tiny" if a.tiny else "SmolLM2-135M-Instruct", "steps": a.steps,
           "prompts_per_step": a.prompts, "generations": a.generations, "max_completion_tokens": a.tokens,
           "command": "python benchmarks/bench_rl.py " + " ".join(argv or sys.argv[1:]), "variants": {}}
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", name, "--steps", str(a.steps), "--prompts", str(a.prompts),
               "--generations", str(a.generations), "--tokens", str(a.tokens), *(["--tiny"] if a.tiny else [])]
        t0 = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, check=True)
            res["variants"][name] = json.loads(p.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            res["variants"][name] = {"timed_out_after_s": a.timeout, "s_per_step_lower_bound": a.timeout / a.steps}
        except subprocess.CalledProcessError as e:
            raise SystemExit(f"variant {name} failed:\n{e.stderr[-3000:]}")
        res["variants"][name]["wall_s"] = round(time.time() - t0, 1)
        print(name, json.dumps(res["variants"][name]), flush=True)
    v = res["variants"]

    def seconds(name):
        return v[name].get("s_per_step", v[name].get("s_per_step_lower_bound"))

    if "s_per_step" in v["optimised"]:
        res["speedup_s_per_step"] = seconds("trl_defaults") / seconds("optimised")
        res["speedup_s_per_step_vs_project"] = seconds("project") / seconds("optimised")
        if "rollout_tok_s" in v["project"]:
            res["speedup_rollout_tok_s_vs_project"] = v["optimised"]["rollout_tok_s"] / v["project"]["rollout_tok_s"]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "variants"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
