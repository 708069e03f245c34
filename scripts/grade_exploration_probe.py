"""Which grades do the SFT model's rollouts name, and how many parse, under RL's sampling settings?

    python scripts/grade_exploration_probe.py [--sft runs/cpu-full/sft] [--per-grade 8] [--generations 4]

The prompts are the first ``--per-grade`` of each grade in the cpu-full RL prompt set (she_lib.rl.rl_prompts, read
from its cache); each is sampled ``--generations`` times with RL's rollout path (she_lib.inference.generate on the
SFT model in the profile's RL precision, <= 128 new tokens) under each setting: T = 1 (GRPO's so far), min_p 0.05,
and min_p 0.05 with the grade temperature T_g = 2 or 3 (she_lib.rollouts.GradeTemperature: the grade word's
first token drawn over the grades at T_g). Per gold grade it reports the share of
rollouts naming each grade, the share of groups with a right rollout (the groups that can teach that grade) and the
share of rollouts whose grade parses. Writes ``results/grade_exploration_probe.json`` with the machine and command.
"""
import argparse
import json

import torch
from transformers import LogitsProcessorList

from she_lib.config import REPO_ROOT, get_profile
from she_lib.inference import generate
from she_lib.labels import get_scale
from she_lib.modeling import load_run
from she_lib.provenance import command_line, machine
from she_lib.rl import curriculum_for, rl_prompts
from she_lib.rollouts import GradeTemperature
from she_lib.schema import build_messages, parse

SETTINGS = {"T=1": (1.0, 0.0), "min_p 0.05": (1.0, 0.05), "T_g=2, min_p 0.05": (2.0, 0.05),
            "T_g=3, min_p 0.05": (3.0, 0.05)}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft", default="runs/cpu-full/sft")
    ap.add_argument("--per-grade", type=int, default=8)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    a = ap.parse_args()
    prof = get_profile("cpu-full")
    df = rl_prompts(prof, a.sft, curriculum_for(prof), 4)[0].groupby("label").head(a.per_grade)
    policy, scale = load_run(a.sft, prof), get_scale(prof.grade_scale)
    tok, rows = policy.tokenizer, df.to_dict("records")
    texts = [tok.apply_chat_template(build_messages(r, scale, prof.order), tokenize=False, add_generation_prompt=True)
             for r in rows]
    table = {}
    for name, (t_grade, min_p) in SETTINGS.items():
        torch.manual_seed(0)
        procs = LogitsProcessorList([GradeTemperature.for_tokenizer(tok, scale.words, t_grade)]) if t_grade != 1 else None
        out = generate(policy.model, tok, texts, batch_size=8, max_new_tokens=a.tokens, do_sample=True,
                       num_return_sequences=a.generations, progress=True, desc=name, min_p=min_p or None,
                       **({"logits_processor": procs} if procs else {}))
        named = [[parse(c, scale).grade for c in group] for group in out]
        per = {}
        for g in scale.words:
            idx = [i for i, r in enumerate(rows) if r["label"] == g]
            flat = [x for i in idx for x in named[i]]
            per[g] = {"named": {w: round(sum(x == w for x in flat) / len(flat), 3) for w in scale.words},
                      "parsed": round(sum(x is not None for x in flat) / len(flat), 3),
                      "groups_with_a_right_rollout": round(sum(g in named[i] for i in idx) / len(idx), 3)}
        table[name] = per
        print(name, json.dumps(per))
    out = {"machine": machine(), "command": command_line(), "sft": a.sft, "prompts_per_grade": a.per_grade,
           "generations": a.generations, "max_new_tokens": a.tokens, "by_gold_grade": table}
    (REPO_ROOT / "results" / "grade_exploration_probe.json").write_text(json.dumps(out, indent=2))
