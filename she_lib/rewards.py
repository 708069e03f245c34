"""The outcome reward R of GRPO and SRPO (AGRL's rule-aware reward is she_lib.rules.RuleReward)."""
from __future__ import annotations

from .labels import GradeScale, get_scale
from .schema import completion_text, parse


class OutcomeReward:
    """R = 1[parsed grade == human label] + format_weight * 1[well formed]; unparsable output earns 0.

    A TRL reward function (``prompts, completions, label, **columns -> list[float]``); GRPO and SRPO share it."""

    def __init__(self, scale: GradeScale | str = "esci", format_weight: float = 0.1):
        self.scale = get_scale(scale)
        self.format_weight = format_weight
        self.__name__ = "outcome"

    def __call__(self, prompts, completions, label, **kwargs) -> list[float]:
        out = []
        for completion, gold in zip(completions, label):
            p = parse(completion_text(completion), self.scale)
            out.append(float(p.grade == gold) + self.format_weight * float(p.well_formed))
        return out
