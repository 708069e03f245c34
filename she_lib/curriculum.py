"""The RL prompt set: difficulty filtering, diversity sampling and an easy-to-hard curriculum (SRPO's
"diversified data filtering" and multi-stage curriculum; TaoSR1 found class-balanced RL data best).

1. **Difficulty.** Each pool prompt's pass rate (``pass_source``): ``"samples"``, p = c / K, the share of K
   rationales sampled from the SFT model that are well formed with the human grade (she_lib.sampling, cached); or
   ``"first_token"``, p = P(gold | x) at the grade's first token (one forward pass per prompt, so a pool of
   thousands is cheap): in the grade-first order the grade is the first thing sampled and the grade words start
   with distinct tokens, so P(gold) is exactly the chance that a rollout at temperature 1 names the gold grade
   (it ignores well-formedness, which the samples count). Prompts with p < ``min_pass`` or
   p > ``max_pass`` are dropped: a group whose G rollouts are all right or all wrong has zero outcome advantage
   under GRPO and teaches nothing. With K <= 10 samples the defaults [0.01, 0.9] (PAPERS §6.6) drop exactly the
   always-wrong (p = 0) and always-right (p = 1) prompts.
   **Fallback** (``fallback="fill"``): when fewer than ``min_prompts`` prompts pass, the set is filled up to
   ``min_prompts`` from the dropped ones, nearest the band first (distance min_pass - p below it, p - max_pass above),
   ties to the lower pass rate, then seeded order. So a weak SFT model (always wrong) or a strong one (always right)
   still gives a prompt set, by construction, and the report says how many were added and why. Always-wrong groups
   carry no outcome advantage, but SRPO's step rewards still differ between rollouts and AGRL's guided replay is
   made for them. ``fallback="raise"`` keeps the strict filter. Not in the papers; a config field to ablate.
2. **Diversity.** Round-robin over strata (``balance`` columns; default grade x top-level category): each round
   takes one not-yet-taken prompt (seeded order) from every stratum that has one left, skipping prompts of a query
   that already has ``per_query_cap`` prompts, until ``select`` prompts are taken. Grades are as balanced as the
   filtered pool allows. The report gives the Shannon entropy (bits) of grade and category, and the grade CV
   (std / mean of the grade counts, population std; 0 = balanced), of the pool and of the selection.
3. **Curriculum.** Stages by pass rate, easy to hard: with boundaries b_1 > b_2 > ..., stage 0 holds p > b_1,
   stage s holds b_{s+1} < p <= b_s, the last stage p <= b_last (PAPERS §6.7: > 0.6, 0.3-0.6, < 0.3). Stage s lasts
   ``stage_steps[s]`` optimizer steps of ``prompts_per_step`` prompts, or one pass over its prompts when
   ``stage_steps`` is None; empty stages are skipped. The trainer reads the prompts in this order
   (``shuffle_dataset=False``), so one run walks the stages and resumes mid-stage from a checkpoint.
   How a stage fills its slots (``stage_order``): ``"random"`` cycles its prompts in seeded permutations, so grades
   arrive in the proportions the filter left (on cpu-full 17 of 24 groups were Exact, and every RL method collapsed
   onto Exact); ``"balanced"`` draws grades round-robin (the stage's grades in ``words`` order) and, within a grade,
   cycles that grade's prompts in a seeded permutation: a class-balanced prompt stream *with replacement*, so a rare
   grade's prompts repeat (TaoSR1 found class-balanced RL data best). Not in the papers; a config field to ablate.

Every step is a switch (``difficulty``, ``diversity``, ``curriculum``) so each can be ablated; without the
curriculum the selection is one stage in seeded random order.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class CurriculumConfig:
    pool_limit: int | None = 96  # train prompts whose pass rate is estimated (seeded sample); None = all
    pass_source: str = "samples"  # "samples" (K rationales) | "first_token" (P(gold) at the grade token)
    k_samples: int = 4  # samples per prompt for the pass rate
    max_new_tokens: int = 128
    temperature: float = 1.0
    sample_batch_size: int = 8
    difficulty: bool = True
    min_pass: float = 0.01
    max_pass: float = 0.9
    min_prompts: int = 8  # fewer prompts in the band -> fill up to this many from the dropped ones (module doc)
    fallback: str = "fill"  # "fill" | "raise"
    diversity: bool = True
    balance: tuple[str, ...] = ("label", "top_category")
    per_query_cap: int | None = 4
    select: int | None = None  # prompts kept by diversity sampling; None = every filtered prompt (balanced order)
    curriculum: bool = True
    boundaries: tuple[float, ...] = (0.6, 0.3)  # pass-rate stage boundaries, descending
    stage_steps: tuple[int, ...] | None = None  # optimizer steps per stage; None = one pass over each stage
    stage_order: str = "random"  # "random" | "balanced": how a stage's slots are filled (module doc, step 3)
    seed: int = 0

    def __post_init__(self):
        if self.stage_order not in ("random", "balanced"):
            raise ValueError(f"stage_order must be 'random' or 'balanced', got {self.stage_order!r}")
        if self.pass_source not in ("samples", "first_token"):
            raise ValueError(f"pass_source must be 'samples' or 'first_token', got {self.pass_source!r}")
        if self.fallback not in ("fill", "raise"):
            raise ValueError(f"fallback must be 'fill' or 'raise', got {self.fallback!r}")

    def to_dict(self) -> dict:
        """The fields, the run key of RL runs. ``stage_order`` is left out at ``"random"``, its behaviour before the
        field existed, so runs recorded before it stay valid (she_lib.runs compares keys exactly); so is
        ``pass_source`` at ``"samples"``."""
        d = asdict(self)
        for name, old in (("stage_order", "random"), ("pass_source", "samples")):
            if d[name] == old:
                del d[name]
        return d


def entropy_bits(values) -> float:
    """Shannon entropy H = -sum_v p_v log2 p_v of the empirical distribution of ``values``."""
    p = pd.Series(list(values)).value_counts(normalize=True).to_numpy()
    return float(-(p * np.log2(p)).sum()) if len(p) else 0.0


def label_cv(labels, words) -> float:
    """std / mean of the counts of every grade in ``words`` (population std; absent grades count 0)."""
    counts = pd.Series(list(labels)).value_counts().reindex(list(words), fill_value=0).to_numpy(float)
    return float(counts.std() / counts.mean()) if counts.mean() > 0 else float("nan")


def top_category(category: pd.Series) -> pd.Series:
    return category.fillna("").str.split(" > ").str[0].replace("", "(none)")


def pass_rates(samples: pd.DataFrame) -> pd.Series:
    """example_id -> share of good samples (sampling.sample_rationales output)."""
    return samples.groupby("example_id")["good"].mean()


def difficulty_filter(df: pd.DataFrame, rates: pd.Series, config: CurriculumConfig) -> tuple[pd.DataFrame, dict]:
    """``df`` with a ``pass_rate`` column, keeping min_pass <= p <= max_pass (all rows when switched off), filled up
    to ``min_prompts`` from the dropped prompts when too few pass (module doc, step 1)."""
    df = df.assign(pass_rate=df["example_id"].map(rates).astype(float))
    if df["pass_rate"].isna().any():
        raise ValueError(f"no pass rate for {int(df['pass_rate'].isna().sum())} prompt(s), e.g. "
                         f"{df.loc[df['pass_rate'].isna(), 'example_id'].iloc[0]!r}")
    p = df["pass_rate"]
    report = {"pool": len(df), "always_right": int((p == 1).sum()), "always_wrong": int((p == 0).sum()),
              "below_min": int((p < config.min_pass).sum()), "above_max": int((p > config.max_pass).sum()),
              "mean_pass_rate": float(p.mean()) if len(p) else None}
    added = 0
    if config.difficulty:
        band = (p >= config.min_pass) & (p <= config.max_pass)
        kept, dropped = df[band], df[~band]
        short = config.min_prompts - len(kept)
        if short > 0 and config.fallback == "fill" and len(dropped):
            dp = dropped["pass_rate"]
            dropped = dropped.assign(_dist=(config.min_pass - dp).where(dp < config.min_pass, dp - config.max_pass))
            dropped = dropped.sample(frac=1, random_state=config.seed).sort_values(["_dist", "pass_rate"], kind="stable")
            fill = dropped.head(short).drop(columns="_dist")
            added = len(fill)
            kept = pd.concat([kept, fill])
            report["fallback"] = (f"only {len(kept) - added} of {len(df)} pool prompts have a pass rate in "
                                  f"[{config.min_pass}, {config.max_pass}]; added {added} from outside the band "
                                  f"({int((fill['pass_rate'] == 0).sum())} always wrong, "
                                  f"{int((fill['pass_rate'] == 1).sum())} always right) to reach min_prompts="
                                  f"{config.min_prompts}")
        elif short > 0 and config.fallback == "raise" and kept.empty:
            raise ValueError(f"no RL prompt of {len(df)} has a pass rate in [{config.min_pass}, {config.max_pass}] "
                             f"({report['always_wrong']} always wrong, {report['always_right']} always right); "
                             "sample a larger pool, widen min_pass/max_pass or set fallback='fill'")
        df = kept
    report["fallback_added"] = added
    report["kept"] = len(df)
    return df.reset_index(drop=True), report


def diversity_sample(df: pd.DataFrame, config: CurriculumConfig, words) -> tuple[pd.DataFrame, dict]:
    """Round-robin over the strata of ``config.balance`` (see module doc); returns the selection in pick order."""
    df = df.assign(top_category=top_category(df["category"])) if "top_category" not in df else df
    pool_report = {"grade_entropy": entropy_bits(df["label"]), "category_entropy": entropy_bits(df["top_category"]),
                   "grade_cv": label_cv(df["label"], words), "n": len(df)}
    if not config.diversity:
        out = df.sample(frac=1, random_state=config.seed).reset_index(drop=True)
        out = out.head(config.select) if config.select else out
    else:
        order = df.sample(frac=1, random_state=config.seed)
        queues = [list(g.index) for _, g in order.groupby(list(config.balance), sort=True)]
        want = min(config.select or len(df), len(df))
        taken, per_query = [], {}
        while len(taken) < want and any(queues):
            for q in queues:
                while q:
                    i = q.pop(0)
                    query = df.at[i, "query"]
                    if config.per_query_cap is None or per_query.get(query, 0) < config.per_query_cap:
                        per_query[query] = per_query.get(query, 0) + 1
                        taken.append(i)
                        break
                if len(taken) == want:
                    break
        out = df.loc[taken].reset_index(drop=True)
    report = {"pool": pool_report,
              "selected": {"grade_entropy": entropy_bits(out["label"]),
                           "category_entropy": entropy_bits(out["top_category"]),
                           "grade_cv": label_cv(out["label"], words), "n": len(out)}}
    return out, report


def stage_of(p: float, boundaries) -> int:
    """0 for the easiest stage (p > b_1), len(boundaries) for the hardest (p <= b_last)."""
    return sum(p <= b for b in boundaries)


def balanced_slots(labels: pd.Series, need: int, rng: np.random.Generator, words=None) -> np.ndarray:
    """``need`` positions into ``labels``: grades round-robin (``words`` order, grades absent from ``labels``
    skipped), each grade's positions cycled in seeded permutations (class-balanced, with replacement)."""
    labels = pd.Series(list(labels))
    grades = [w for w in (words or sorted(labels.unique())) if (labels == w).any()]
    cycles = {g: [] for g in grades}
    out = []
    for k in range(need):
        g = grades[k % len(grades)]
        if not cycles[g]:
            idx = np.flatnonzero(labels.to_numpy() == g)
            cycles[g] = list(idx[rng.permutation(len(idx))])
        out.append(cycles[g].pop(0))
    return np.asarray(out, dtype=int)


def curriculum_order(df: pd.DataFrame, config: CurriculumConfig, prompts_per_step: int,
                     words=None) -> tuple[pd.DataFrame, dict]:
    """Prompts in training order with a ``stage`` column; length = total steps x ``prompts_per_step``. ``words``
    (the grade scale) orders the round-robin of ``stage_order="balanced"``."""
    if df.empty:
        raise ValueError("no RL prompts left after filtering; sample a larger pool or widen min_pass/max_pass")
    rng = np.random.default_rng(config.seed)
    stages = df["pass_rate"].map(lambda p: stage_of(p, config.boundaries)) if config.curriculum else \
        pd.Series(0, index=df.index)
    n_stages = len(config.boundaries) + 1 if config.curriculum else 1
    if config.stage_steps is not None and len(config.stage_steps) != n_stages:
        raise ValueError(f"stage_steps has {len(config.stage_steps)} entries for {n_stages} stages")
    parts, report = [], []
    for s in range(n_stages):
        rows = df[stages == s]
        steps = config.stage_steps[s] if config.stage_steps is not None else math.ceil(len(rows) / prompts_per_step)
        report.append({"stage": s, "prompts": len(rows), "steps": int(steps) if len(rows) else 0,
                       "mean_pass_rate": float(rows["pass_rate"].mean()) if len(rows) else None})
        if rows.empty or steps == 0:
            continue
        need = steps * prompts_per_step
        if config.stage_order == "balanced":
            idx = balanced_slots(rows["label"], need, rng, words)
        else:
            idx = np.concatenate([rng.permutation(len(rows)) for _ in range(math.ceil(need / len(rows)))])[:need]
        parts.append(rows.iloc[idx].assign(stage=s))
        report[-1]["slots_by_grade"] = rows["label"].iloc[idx].value_counts().to_dict()
    return pd.concat(parts, ignore_index=True), {"stages": report, "steps": sum(r["steps"] for r in report)}


def build_rl_prompts(train: pd.DataFrame, samples: pd.DataFrame | None, config: CurriculumConfig, words,
                     prompts_per_step: int, rates: pd.Series | None = None) -> tuple[pd.DataFrame, dict]:
    """Pool -> difficulty filter -> diversity selection -> curriculum order, with one report of every count.
    The pass rates are ``rates`` (example_id -> p) or those of ``samples`` (pass-rate samples of the pool); both
    may be None only when difficulty and curriculum are both off."""
    if rates is None and samples is None:
        if config.difficulty or config.curriculum:
            raise ValueError("difficulty filtering and the curriculum need pass rates or pass-rate samples")
        rates = pd.Series(0.5, index=train["example_id"])
    elif rates is None:
        rates = pass_rates(samples)
    kept, diff = difficulty_filter(train, rates, config)
    chosen, div = diversity_sample(kept, config, words)
    ordered, cur = curriculum_order(chosen, config, prompts_per_step, words)
    return ordered, {"difficulty": diff, "diversity": div, "curriculum": cur, "config": config.to_dict()}


def save_report(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2, default=float))
