"""Hybrid examiner: one step-reward vector per rationale; the verifier decides where it knows, the GenRM
where it does not. The one interface SRPO and AGRL use: ``examine(batch) -> Examination``.

For a batch of rollouts (mappings with the example's record, its human ``label`` and ``rationale``;
optionally ``truncated`` = generation hit its token limit) it returns, per rollout, a reward per step
of STEPS (in that order), the source of each reward, the grade correctness, ``well_formed``, and the raw
readings (verifier truth 1/0/nan, GenRM P(correct) or nan).

Per step j, with v_j in {1, 0, undecided} the verifier's truth and g_j in [0, 1] the GenRM's P(correct):

    rule "verifier_first" (default)  r_j = v_j                              if v_j is decided, else g_j
    rule "blend"                     r_j = alpha v_j + (1 - alpha) g_j      if decided, else g_j
    rule "confidence"                r_j = (1 - l_j) v_j + l_j g_j,  l_j = (1 - alpha) |2 g_j - 1|
                                     if decided, else g_j  (a confident GenRM moves the reward toward
                                     its score, an unsure one leaves the verifier's)

With no GenRM an undecided step gets ``undecided_reward``. Bad input never raises; precedence:

    over-length (``truncated``, or more than ``max_chars`` characters)  every step overlength_reward
    unparsable (not a string, or no tagged element at all)            every step unparsable_reward
    a missing step                                                    that step missing_reward
    a repeated step                                                   that step repeated_reward

Over-length and unparsable rollouts have ``correct = False``. Other format faults (step order, text outside
the tags, a judgement contradicting <grade>) leave step rewards alone; ``well_formed`` is there for a
format reward. ``correct`` = the parsed <grade> equals the human label.

Cost: the verifier is pure Python (~0.5 ms a rationale); the GenRM is called only on rationales that need it
(under verifier_first, those with a present step the verifier leaves undecided; all scorable ones under the
blend rules or ``score_all``), once per rationale, teacher-forced (no decoding).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .labels import GradeScale, get_scale
from .schema import STEPS
from .verifier import CORRECT, VerifierConfig, verify

RULES = ("verifier_first", "blend", "confidence")
SCORED = ("verifier", "genrm", "blend", "default")  # sources of steps that were scored (not bad input)
VERDICTS = ("verifier", "genrm", "blend")  # sources of a verdict: SCORED less "default" (an undecided step)


@dataclass(frozen=True)
class HybridConfig:
    rule: str = "verifier_first"  # one of RULES
    alpha: float = 0.5  # the verifier's weight under "blend"; 1 - alpha caps the GenRM's under "confidence"
    undecided_reward: float = 0.5  # an undecided step when no GenRM is given
    missing_reward: float = 0.0
    repeated_reward: float = 0.0
    unparsable_reward: float = 0.0
    overlength_reward: float = 0.0
    max_chars: int = 1000  # length limit; teacher rationales are 300-450 characters (~100 tokens)
    score_all: bool = False  # call the GenRM on every scorable rationale (for agreement reports)
    threshold: float = 0.5  # GenRM P(correct) >= threshold reads as "correct" when agreement is measured
    verifier: VerifierConfig = field(default_factory=VerifierConfig)


@dataclass
class Examination:
    rewards: np.ndarray  # [n, len(STEPS)] float
    sources: np.ndarray  # [n, len(STEPS)] str: SCORED or missing / repeated / unparsable / overlength
    correct: np.ndarray  # [n] bool: the grade equals the human label
    well_formed: np.ndarray  # [n] bool
    verifier: np.ndarray  # [n, len(STEPS)] 1.0 / 0.0 / nan (undecided or not verified)
    genrm: np.ndarray  # [n, len(STEPS)] P(correct), nan where the GenRM was not called
    reasons: list[dict]  # per rollout: step -> the verifier's reason
    threshold: float = 0.5
    seconds: float = 0.0
    genrm_seconds: float = 0.0
    genrm_calls: int = 0

    def frame(self) -> pd.DataFrame:
        """One row per (rollout, step)."""
        return pd.DataFrame([{"rollout": i, "step": s, "reward": self.rewards[i, j], "source": self.sources[i, j],
                              "verifier": self.verifier[i, j], "genrm": self.genrm[i, j],
                              "reason": self.reasons[i].get(s, "")}
                             for i in range(len(self.rewards)) for j, s in enumerate(STEPS)])

    def judged(self) -> np.ndarray:
        """[n, len(STEPS)] bool: the step's reward is a verdict (VERDICTS), not a default for an undecided step or
        for bad input; SRPO normalises and weights these steps only (she_lib.srpo)."""
        return np.isin(self.sources, VERDICTS)

    def select(self, rows) -> "Examination":
        """The rollouts ``rows`` (indices or a boolean mask); costs stay those of the whole batch."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, dtype=int)
        names = ("rewards", "sources", "correct", "well_formed", "verifier", "genrm")
        arrays = {f: getattr(self, f)[rows] for f in names}
        return dataclasses.replace(self, **arrays, reasons=[self.reasons[i] for i in rows])

    def report(self) -> dict:
        """Verifier coverage (decided share of judged steps), GenRM-verifier agreement where both speak, cost."""
        n, judged = len(self.rewards), np.isin(self.sources, SCORED)
        decided = judged & ~np.isnan(self.verifier)
        both = decided & ~np.isnan(self.genrm)
        agree = ((self.genrm >= self.threshold) == (self.verifier == 1))[both]
        return {"rollouts": n, "steps_judged": int(judged.sum()),
                "verifier_coverage": float(decided.sum() / judged.sum()) if judged.any() else None,
                "agreement": float(agree.mean()) if both.any() else None, "agreement_steps": int(both.sum()),
                "correct_rate": float(self.correct.mean()) if n else None,
                "well_formed_rate": float(self.well_formed.mean()) if n else None,
                "rollouts_with": {k: int((self.sources == k).any(1).sum())
                                  for k in ("missing", "repeated", "unparsable", "overlength")},
                "genrm_calls": self.genrm_calls, "genrm_call_rate": self.genrm_calls / max(n, 1),
                "seconds": round(self.seconds, 3), "seconds_per_1000": round(1000 * self.seconds / max(n, 1), 2),
                "genrm_seconds_per_1000": round(1000 * self.genrm_seconds / max(n, 1), 2)}


class TableScorer:
    """A GenRM stand-in with fixed scores: ``table[(example_id, rationale)]`` or ``table[rationale]`` -> one
    P(correct) per step. For exact tests, and to reuse scores already computed."""

    def __init__(self, table: dict):
        self.table, self.calls = table, 0

    def score(self, examples, rationales) -> np.ndarray:
        self.calls += len(rationales)
        return np.array([self.table.get((e.get("example_id"), r), self.table.get(r)) for e, r in
                         zip(examples, rationales)], dtype=float).reshape(len(rationales), len(STEPS))


def _combine(v: float, g: float, config: HybridConfig) -> tuple[float, str]:
    if np.isnan(v):
        return (config.undecided_reward, "default") if np.isnan(g) else (g, "genrm")
    if config.rule == "verifier_first" or np.isnan(g):
        return v, "verifier"
    lam = 1 - config.alpha if config.rule == "blend" else (1 - config.alpha) * abs(2 * g - 1)
    return (1 - lam) * v + lam * g, "blend"


class Examiner:
    """``Examiner(genrm, config, scale).examine(batch)``; ``genrm`` has ``score(examples, rationales)``."""

    def __init__(self, genrm=None, config: HybridConfig | None = None, scale: GradeScale | str = "esci"):
        self.genrm, self.config = genrm, config or HybridConfig()
        self.scale = get_scale(scale)
        if self.config.rule not in RULES:
            raise ValueError(f"unknown rule {self.config.rule!r}; choose one of {RULES}")

    def examine(self, batch) -> Examination:
        t0, cfg = time.time(), self.config
        rows = batch.to_dict("records") if isinstance(batch, pd.DataFrame) else list(batch)
        n, k = len(rows), len(STEPS)
        ver, gen = np.full((n, k), np.nan), np.full((n, k), np.nan)
        src, rewards = np.full((n, k), "", dtype=object), np.zeros((n, k))
        correct, well_formed, reasons, status, need = np.zeros(n, bool), np.zeros(n, bool), [], {}, []
        for i, ex in enumerate(rows):
            text = ex.get("rationale")
            if bool(ex.get("truncated", False)) or (isinstance(text, str) and len(text) > cfg.max_chars):
                src[i], rewards[i] = "overlength", cfg.overlength_reward
                reasons.append({s: "over the length limit" for s in STEPS})
                continue
            v = verify(ex, text, self.scale, cfg.verifier)
            reasons.append({s: t.reason for s, t in v.steps.items()})
            if v.unparsable:
                src[i], rewards[i] = "unparsable", cfg.unparsable_reward
                continue
            correct[i], well_formed[i] = v.grade.truth == CORRECT, v.parsed.well_formed
            ver[i], status[i] = v.vector(), v.status
            open_step = any(v.status[s] == "ok" and np.isnan(ver[i, j]) for j, s in enumerate(STEPS))
            if open_step or cfg.score_all or cfg.rule != "verifier_first":
                need.append(i)
        t1 = time.time()
        if need and self.genrm is not None:
            gen[need] = self.genrm.score([rows[i] for i in need], [rows[i]["rationale"] for i in need])
        t2 = time.time()
        for i, st in status.items():
            for j, s in enumerate(STEPS):
                if st[s] == "missing":
                    rewards[i, j], src[i, j] = cfg.missing_reward, "missing"
                elif st[s] == "repeated":
                    rewards[i, j], src[i, j] = cfg.repeated_reward, "repeated"
                else:
                    rewards[i, j], src[i, j] = _combine(ver[i, j], gen[i, j], cfg)
        return Examination(rewards, src, correct, well_formed, ver, gen, reasons, cfg.threshold,
                           seconds=time.time() - t0, genrm_seconds=t2 - t1,
                           genrm_calls=len(need) if self.genrm is not None else 0)


def examine(batch, genrm=None, config: HybridConfig | None = None, scale: GradeScale | str = "esci") -> Examination:
    """Per-step rewards (STEPS order) + grade correctness of every rollout in ``batch``; see the module doc."""
    return Examiner(genrm, config, scale).examine(batch)
