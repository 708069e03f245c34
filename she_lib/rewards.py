"""The outcome reward R of GRPO and SRPO (AGRL's rule-aware reward is she_lib.rules.RuleReward), and the truncation
rule both share."""
from __future__ import annotations

from .labels import GradeScale, get_scale
from .schema import completion_text, parse


def truncated(completion_ids, eos_token_ids, n: int) -> list[bool]:
    """Which of ``n`` completions were cut at the token limit: no end token last among their ids (TRL passes each
    completion's ids up to and including its first end token). All False when either is not given."""
    eos = set(eos_token_ids or ())
    if not eos or completion_ids is None:
        return [False] * n
    return [not len(ids) or int(ids[-1]) not in eos for ids in completion_ids]


class OutcomeReward:
    """R = 1[parsed grade == human label] + format_weight * 1[well formed]; unparsable output earns 0, and so does a
    completion cut at the token limit when ``eos_token_ids`` are given (TRL passes ``completion_ids``): the
    examiner marks such a rollout wrong (she_lib.examiner), so its outcome and its steps agree, and an answer that
    never ends is not one a deployed judge could return.

    A TRL reward function (``prompts, completions, label, **columns -> list[float]``); GRPO and SRPO share it."""

    def __init__(self, scale: GradeScale | str = "esci", format_weight: float = 0.1, eos_token_ids=()):
        self.scale = get_scale(scale)
        self.format_weight = format_weight
        self.eos_token_ids = tuple(eos_token_ids or ())
        self.__name__ = "outcome"

    def __call__(self, prompts, completions, label, completion_ids=None, **kwargs) -> list[float]:
        cut = truncated(completion_ids, self.eos_token_ids, len(completions))
        out = []
        for completion, gold, over in zip(completions, label, cut):
            p = parse(completion_text(completion), self.scale)
            out.append(0.0 if over else float(p.grade == gold) + self.format_weight * float(p.well_formed))
        return out
