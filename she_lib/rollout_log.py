"""The rollout log, ``runs/<profile>/<run>/rollouts.jsonl``: one JSON object per rollout, written by the SRPO trainer
(she_lib.srpo_trainer, SRPO and AGRL runs) and by she_lib.inspector's demo, read by the inspector. The keys
(:data:`ROLLOUT_KEYS`)::

    step, group, rollout            trainer global step, prompt index within that step, 0..G-1
    example_id, query, title, label the pair and its human grade
    completion, grade, correct      the rationale, its parsed grade (or null), grade == label
    outcome_reward, outcome_advantage
    steps                           the five step names (she_lib.schema.STEPS)
    step_rewards                    {"verifier": [5], "genrm": [5], "combined": [5]}: a value in [0, 1] or null
                                    (null list: no such reader)
    step_sources, step_advantages, critical ("" | "first_error" | "discriminative")    one per step
    tokens, token_advantages, token_steps     one per completion token (token_steps: step name or "")
"""
from __future__ import annotations

import numpy as np

from .schema import STEPS

ROLLOUT_KEYS = ("step", "group", "rollout", "example_id", "query", "title", "label", "completion", "grade", "correct",
                "outcome_reward", "outcome_advantage", "steps", "step_rewards", "step_sources", "step_advantages",
                "critical", "tokens", "token_advantages", "token_steps")
CRITICAL = ("", "first_error", "discriminative")  # by the code of srpo.step_advantages


def _floats(values) -> list[float | None]:
    return [None if np.isnan(x) else round(float(x), 4) for x in values]


def token_steps(spans: dict[str, tuple[int, int]], n_tokens: int) -> list[str]:
    """The step each of ``n_tokens`` tokens belongs to ("" outside every step) from {step: token range [i, j)}."""
    out = [""] * n_tokens
    for s, (a, b) in spans.items():
        for t in range(a, min(b, n_tokens)):
            out[t] = s
    return out


def rollout_record(*, step: int, group: int, rollout: int, example: dict, completion: str, grade: str | None,
                   correct: bool, outcome_reward: float, outcome_advantage: float, step_rewards: dict,
                   step_sources, step_advantages, critical, tokens: list[str], token_advantages,
                   token_steps: list[str], **extra) -> dict:
    """One line of the log, in :data:`ROLLOUT_KEYS` order, then ``extra``. ``step_rewards`` maps each reader to its
    five readings (NaN: none, written null) or to None (no such reader); ``critical`` holds the codes of
    srpo.step_advantages."""
    return {"step": int(step), "group": group, "rollout": rollout, "example_id": example.get("example_id"),
            "query": example.get("query"), "title": example.get("title"), "label": example.get("label"),
            "completion": completion, "grade": grade, "correct": bool(correct),
            "outcome_reward": round(float(outcome_reward), 4), "outcome_advantage": round(float(outcome_advantage), 4),
            "steps": list(STEPS),
            "step_rewards": {k: None if v is None else _floats(v) for k, v in step_rewards.items()},
            "step_sources": [str(s) for s in step_sources],
            "step_advantages": [round(float(x), 4) for x in step_advantages],
            "critical": [CRITICAL[int(c)] for c in critical],
            "tokens": tokens, "token_advantages": [round(float(x), 4) for x in token_advantages],
            "token_steps": token_steps, **extra}
