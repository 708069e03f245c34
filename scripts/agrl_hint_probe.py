"""Does AGRL's hint reach the SFT model? P(gold) at the grade token with and without the hint, by grade.

    python scripts/agrl_hint_probe.py [--sft runs/cpu-full/sft] [--per-grade 12]

The prompts are the first ``--per-grade`` of each grade in the cpu-full RL prompt set (she_lib.rl.rl_prompts, read
from its cache); the hints are she_lib.agrl's ("grade": the gold grade; "steps": plus the accepted type and attribute
verdicts). Writes ``results/agrl_hint_probe.json`` with the machine and command.
"""
import argparse
import json

import numpy as np

from she_lib.agrl import HINTS, guided_messages
from she_lib.config import REPO_ROOT, get_profile
from she_lib.inference import grade_probabilities
from she_lib.labels import get_scale
from she_lib.modeling import load_run
from she_lib.provenance import command_line, machine
from she_lib.rl import curriculum_for, rl_prompts
from she_lib.schema import build_messages

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft", default="runs/cpu-full/sft")
    ap.add_argument("--per-grade", type=int, default=12)
    a = ap.parse_args()
    prof = get_profile("cpu-full")
    df = rl_prompts(prof, a.sft, curriculum_for(prof), 4)[0].groupby("label").head(a.per_grade)
    policy, scale = load_run(a.sft, prof), get_scale(prof.grade_scale)
    rows, gold = df.to_dict("records"), np.array([scale.words.index(x) for x in df["label"]])

    def p_gold(messages):
        texts = [policy.tokenizer.apply_chat_template(messages(r), tokenize=False, add_generation_prompt=True)
                 for r in rows]
        p = grade_probabilities(policy.model, policy.tokenizer, texts, scale.words, progress=False)
        return p[np.arange(len(rows)), gold]

    cols = {"no hint": p_gold(lambda r: build_messages(r, scale, prof.order))}
    cols.update({f"hint {h}": p_gold(lambda r, h=h: guided_messages(r, scale, prof.order, h)) for h in HINTS})
    table = {g: {k: round(float(v[df["label"].to_numpy() == g].mean()), 3) for k, v in cols.items()}
             for g in scale.words}
    out = {"machine": machine(), "command": command_line(), "sft": a.sft, "prompts_per_grade": a.per_grade,
           "mean_p_gold": table}
    (REPO_ROOT / "results" / "agrl_hint_probe.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(table, indent=1))
