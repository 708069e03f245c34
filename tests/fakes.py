"""A fake generation backend for the RL trainers: TRL's ``rollout_func`` hook (the path vLLM's server mode and custom
backends take) returning fixed completions, tokenized one character at a time, so token boundaries differ from what
the HF tokenizer would produce for the same text (as a vLLM engine's may)."""
import os
import random

import pandas as pd
import torch

from she_lib.corruptions import corrupt
from she_lib.labels import get_scale
from she_lib.rationales import teacher_rationale
from she_lib.schema import user_prompt
from she_lib.rl import rl_config, rl_dataset
from she_lib.rewards import OutcomeReward
from she_lib.srpo_trainer import SRPOTrainer

SCALE = get_scale("esci")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is "experimental" in TRL 1.15


def fixed_rollouts(rows, order="grade_first"):
    """Per prompt, G = 4 completions: the teacher rationale, two single-step corruptions and an unparsable one."""
    rng = random.Random(0)
    return {ex["example_id"]: [teacher_rationale(ex, order), corrupt(ex, "type", rng, SCALE).rationale(order),
                               corrupt(ex, "grade", rng, SCALE).rationale(order), "<grade>maybe"] for ex in rows}


def char_ids(tok, text):
    return [t for ch in text for t in tok.encode(ch, add_special_tokens=False)] + [tok.eos_token_id]


def fake_backend(guided=None):
    """``rollout_func(prompts, trainer)``: the i-th visit of a prompt gets ``trainer._fake_rollouts[user msg][i % 4]``;
    a prompt whose user message carries a hint gets ``guided`` (a function of the plain user message) instead."""
    seen = {}

    def rollout(prompts, trainer):
        tok = trainer.processing_class
        prompt_ids, completion_ids = [], []
        for p in prompts:
            text = tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            key = p[-1]["content"]  # the user message: query and product (+ a hint when guided)
            if "\nHint: " in key:
                completion = guided(key.split("\nHint: ")[0])
            else:
                i = seen.get(key, 0)
                seen[key] = i + 1
                completion = trainer._fake_rollouts[key][i % 4]
            prompt_ids.append(tok.encode(text, add_special_tokens=False))
            completion_ids.append(char_ids(tok, completion))
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids,
                "logprobs": [[0.0] * len(c) for c in completion_ids]}

    return rollout


def fake_trainer(cls, smoke, tmp_path, rows, process_weight, rollouts=None, guided=None, reward=None, **kw):
    """A GRPOTrainer / SRPOTrainer on the tiny model whose generations come from :func:`fake_backend`."""
    from she_lib.modeling import load_policy
    from she_lib.trl_compat import ensure_trl_cpu_support

    ensure_trl_cpu_support()
    policy = load_policy(smoke)
    args = rl_config(smoke, "srpo", tmp_path / cls.__name__, process_weight=process_weight, max_steps=1,
                     num_generations=4, prompts_per_step=2, max_completion_length=400)
    ds = rl_dataset(pd.DataFrame(rows), smoke)
    extra = {"scale": SCALE} if issubclass(cls, SRPOTrainer) else {}
    trainer = cls(model=policy.model, reward_funcs=[reward or OutcomeReward(SCALE)], args=args, train_dataset=ds,
                  processing_class=policy.tokenizer, peft_config=policy.lora_config,
                  rollout_func=fake_backend(guided), **extra, **kw)
    fixed = rollouts or fixed_rollouts(rows)
    trainer._fake_rollouts = {user_prompt(ex): fixed[ex["example_id"]] for ex in rows}
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); the loss is called directly here
    return trainer, ds


def bf16_with_large_logits(model, ids, scale=600.0):
    """A bf16 copy of ``model`` whose LM head rows ``ids`` share a large component (w_k += scale * mean of those
    rows), so their logits are large (> 16) and bf16 rounds them to steps of 0.125 or more: the case where the
    model's own logits and h . w in fp32 give different probabilities. The head is a fresh bias-free Linear (not
    tied to the embeddings)."""
    import copy

    model = copy.deepcopy(model)
    w = model.get_output_embeddings().weight.detach().clone()
    w[ids] += scale * w[ids].mean(0)
    head = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    head.weight = torch.nn.Parameter(w)
    model.set_output_embeddings(head)
    return model.to(torch.bfloat16).eval()

