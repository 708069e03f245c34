"""Error analysis of saved test predictions (notebook 06): where and why the methods of notebook 05 fail.

Predictions come from evaluate.load_predictions (one column per method; UNPARSED for an answer without a grade,
NaN where a method made no prediction, e.g. decoded read-outs of k pairs per query). Accuracy is taken over the
pairs a method predicted.

* :func:`accuracy_by`, :func:`confusion_by`: accuracy by any key (human grade, top-level category, query kind)
  and confusion counts (human grade x predicted grade) within each key value.
* :func:`query_kinds`: ``negation`` (the query excludes a term: facts' ``negated_terms``, e.g. "without straw"),
  ``brand`` (the query names a brand of the split's products, longest whole-word match of a brand of 3+
  characters) and ``other_brand`` (it does, and the product's brand and title do not contain it: a brand-
  substitute pair).
* :func:`first_wrong_steps`: the hybrid examiner (she_lib.examiner) on decoded rationales; a rationale is wrong if
  its grade is wrong or a step's reward is below ``threshold``; its first wrong step is the first step of STEPS
  (the reasoning order) with reward < threshold, ``grade`` if every step passes but the grade is wrong, or the
  examiner's verdict on the whole text (``unparsable`` / ``overlength``).
* :func:`genrm_disagreements`: steps the verifier decides where the GenRM reads the other way
  (P(correct) >= threshold vs verifier truth), with the verifier's reason.
* :func:`rl_runs`, :func:`before_after`: RL runs (run.json kind grpo / srpo / agrl) and the SFT run they start
  from (``init_adapter``); correctness before vs after on the pairs both predicted, and the pairs that flipped.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .evaluate import policy_runs, prediction_files
from .examiner import Examiner, HybridConfig
from .facts import STOPWORDS
from .metrics import UNPARSED
from .predictions import read_predictions
from .schema import STEPS

RL_KINDS = ("grpo", "srpo", "agrl")


def correctness(preds: pd.DataFrame, methods) -> pd.DataFrame:
    """1.0 right / 0.0 wrong per pair and method; NaN where the method has no prediction."""
    return pd.DataFrame({m: (preds[m] == preds["label"]).astype(float).where(preds[m].notna()) for m in methods})


def accuracy_by(preds: pd.DataFrame, methods, key) -> pd.DataFrame:
    """Accuracy of each method per value of ``key`` (a column name or a Series aligned with ``preds``), + pairs."""
    key = preds[key] if isinstance(key, str) else key
    out = correctness(preds, methods).groupby(key).mean()
    return out.assign(pairs=key.value_counts()).sort_values("pairs", ascending=False)


def confusion_by(preds: pd.DataFrame, method: str, key, words) -> pd.DataFrame:
    """Counts: rows (key value, human grade), columns predicted grade (+ UNPARSED), over the pairs ``method`` predicted."""
    key = preds[key] if isinstance(key, str) else key
    have = preds[method].notna()
    cols = pd.Categorical(preds.loc[have, method], categories=[*words, UNPARSED])
    rows = [key[have].rename("key"), pd.Categorical(preds.loc[have, "label"], categories=list(words))]
    return pd.crosstab(rows, cols, rownames=["key", "human"], colnames=["predicted"], dropna=False)


def top_category(category: pd.Series) -> pd.Series:
    return category.fillna("").str.split(" > ").str[0].replace("", "(none)")


# ------------------------------------------------------------------------------------- query kinds
def brand_names(df: pd.DataFrame) -> list[str]:
    """Lower-cased brands of ``df``'s products that can be matched in a query (3+ characters, not a stop word or a
    number), longest first."""
    names = {b.strip().lower() for b in df["brand"].dropna().astype(str)}
    return sorted((b for b in names if len(b) >= 3 and b not in STOPWORDS and not b.replace(" ", "").isdigit()),
                  key=lambda b: (-len(b), b))


def named_brand(query: str, brands) -> str:
    """The first (longest) brand of ``brands`` that occurs in ``query`` as whole words, else ''."""
    q = str(query).lower()
    return next((b for b in brands if re.search(rf"(?<!\w){re.escape(b)}(?!\w)", q)), "")


def query_kinds(df: pd.DataFrame, brands=None) -> pd.DataFrame:
    """Per pair: ``negation`` (bool), ``brand`` (the brand the query names, or ''), ``other_brand`` (bool) and
    ``kind``: "negation", "brand substitute" (other_brand), "brand, same brand", or "other" (first that applies)."""
    brands = brand_names(df) if brands is None else brands
    named = {q: named_brand(q, brands) for q in df["query"].unique()}
    brand = df["query"].map(named)
    product = (df["brand"].fillna("") + " " + df["title"].fillna("")).str.lower()
    other = pd.Series([bool(b) and not re.search(rf"(?<!\w){re.escape(b)}(?!\w)", p)
                       for b, p in zip(brand, product)], index=df.index)
    neg = df["negated_terms"].map(len) > 0
    kind = np.select([neg, other, brand != ""], ["negation", "brand substitute", "brand, same brand"], "other")
    return pd.DataFrame({"negation": neg, "brand": brand, "other_brand": other, "kind": kind}, index=df.index)


def hardest_queries(preds: pd.DataFrame, method: str, kinds: pd.DataFrame | None = None, n: int = 8) -> pd.DataFrame:
    """The ``n`` test queries where ``method`` is least accurate (pairs it predicted), with their kind flags."""
    ok = correctness(preds, [method])[method]
    out = ok.groupby(preds["query"]).agg(["mean", "count"]).rename(columns={"mean": "accuracy", "count": "pairs"})
    out["labels"] = preds.groupby("query")["label"].agg(lambda s: ", ".join(f"{k} {v}" for k, v in s.value_counts().items()))
    if kinds is not None:
        flags = kinds.groupby(preds["query"]).agg(negation=("negation", "first"), brand=("brand", "first"),
                                                  other_brand_pairs=("other_brand", "sum"))
        out = out.join(flags)
    return out.sort_values(["accuracy", "pairs"], ascending=[True, False]).head(n)


# ---------------------------------------------------------------------------------- rationale steps
def first_wrong_steps(rows, scale="esci", genrm=None, threshold: float = 0.5) -> pd.DataFrame:
    """One row per wrong rationale of ``rows`` (mappings with the example's record, ``label`` and ``rationale``):
    example_id, correct (grade), first_wrong (a step of STEPS, ``grade``, ``unparsable`` or ``overlength``), its
    reward and the examiner's reason (module doc)."""
    rows = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    exam = Examiner(genrm, HybridConfig(threshold=threshold), scale).examine(rows)
    out = []
    for i, r in enumerate(rows):
        low = np.flatnonzero(exam.rewards[i] < threshold)
        if exam.correct[i] and not len(low):
            continue
        whole = exam.sources[i, 0] if exam.sources[i, 0] in ("unparsable", "overlength") else None
        step = whole or (STEPS[low[0]] if len(low) else "grade")
        j = STEPS.index(step) if step in STEPS else None
        out.append({"example_id": r.get("example_id"), "correct": bool(exam.correct[i]), "first_wrong": step,
                    "reward": float(exam.rewards[i, j]) if j is not None else np.nan,
                    "source": exam.sources[i, j] if j is not None else whole or "grade",
                    "reason": exam.reasons[i].get(step, "") if j is not None else
                    ("the grade differs from the human label" if step == "grade" else whole)})
    return pd.DataFrame(out, columns=["example_id", "correct", "first_wrong", "reward", "source", "reason"])


def genrm_disagreements(rows, genrm, scale="esci", threshold: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per decided step where GenRM and verifier disagree: example_id, origin, step, verifier, genrm,
    reason; agreement per ``origin`` of ``rows``: steps both read, agreement rate)."""
    rows = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    exam = Examiner(genrm, HybridConfig(score_all=True, threshold=threshold), scale).examine(rows)
    both = ~np.isnan(exam.verifier) & ~np.isnan(exam.genrm)
    differ = both & ((exam.genrm >= threshold) != (exam.verifier == 1))
    out = [{"example_id": rows[i].get("example_id"), "origin": rows[i].get("origin", ""), "step": STEPS[j],
            "verifier": "correct" if exam.verifier[i, j] == 1 else "incorrect", "genrm": round(float(exam.genrm[i, j]), 3),
            "reason": exam.reasons[i][STEPS[j]]} for i, j in zip(*np.nonzero(differ))]
    origin = pd.Series([r.get("origin", "") for r in rows])
    agree = pd.DataFrame({"origin": np.repeat(origin.to_numpy(), len(STEPS)).reshape(len(rows), -1)[both],
                          "agree": ~differ[both]})
    summary = agree.groupby("origin")["agree"].agg(steps="size", agreement="mean")
    return pd.DataFrame(out, columns=["example_id", "origin", "step", "verifier", "genrm", "reason"]), summary


# ---------------------------------------------------------------------------------------------- RL
def rl_runs(profile) -> list[tuple[str, str | None]]:
    """(RL run name, the name of the run it started from or None) for every finished RL run of ``profile``."""
    out = []
    for run in policy_runs(profile):
        info = json.loads((run / "run.json").read_text())
        if info.get("kind") in RL_KINDS:
            init = info.get("init_adapter")
            out.append((run.name, (run / init).resolve().name if init else None))
    return out


def before_after(preds: pd.DataFrame, before: str, after: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(counts of right / wrong before x after on the pairs both methods predicted; the pairs whose correctness
    flipped, with both predictions)."""
    m = preds[preds[before].notna() & preds[after].notna()]
    ok = correctness(m, [before, after]).astype(bool)
    table = pd.crosstab(ok[before].map({True: "right", False: "wrong"}).rename(f"{before} (before)"),
                        ok[after].map({True: "right", False: "wrong"}).rename(f"{after} (after)"))
    flips = m.loc[ok[before] != ok[after], ["example_id", "query", "label", before, after]]
    return table, flips.assign(change=np.where(ok.loc[flips.index, after], "fixed", "broken"))


def rationale_rows(preds_with_completion: pd.DataFrame, df: pd.DataFrame) -> list[dict]:
    """Examiner input: the example records of ``df`` joined to decoded predictions (example_id, completion)."""
    m = df.merge(preds_with_completion[["example_id", "completion"]], on="example_id", how="inner")
    return [{**r, "rationale": r["completion"]} for r in m.to_dict("records")]


def decoded_predictions(profile, methods) -> dict[str, pd.DataFrame]:
    """method -> its decoded prediction cache (example_id, completion, pred) for the methods that decode."""
    files = prediction_files(profile)
    out = {}
    for m in methods:
        if m in files:
            p = read_predictions(files[m]).reset_index()
            if "completion" in p.columns:
                out[m] = p
    return out
