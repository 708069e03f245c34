"""Classification metrics with query-level bootstrap confidence intervals.

Predictions that could not be parsed are ``None``; they are mapped to the extra column UNPARSED of the
confusion matrix, so they count as a miss for the true class (recall) and for no class's precision.
Macro-F1 is the unweighted mean of the per-class F1 over the scale's grades (scikit-learn's
``f1_score(..., labels=grades, average="macro", zero_division=0)``).

Bootstrap (:func:`bootstrap_ci`): queries are resampled with replacement (pairs of one query are not
independent); each replicate's confusion matrix is the sum of its queries' confusion matrices, which is
exact and fast; the interval is the (alpha/2, 1-alpha/2) percentile of the replicate metric.

Paired bootstrap (:func:`paired_bootstrap`), methods A and B scored on the same pairs: one resample of the
Q queries (counts c ~ Multinomial(Q, 1/Q)) is applied to both, d*_c = m_c(A) - m_c(B) for m in {accuracy,
macro-F1}; the observed difference is d = m(A) - m(B) on all queries. Reported: d, the percentile interval of
d* (``inverted_cdf``: a quantile is an attained replicate value), and the two-sided p-value of H0: d = 0 from
the null-shifted replicates (Efron & Tibshirani 1993, 16.4)

    p = P*( |d* - d| >= |d| )

(identical predictions: d = 0, so p = 1). ``n_samples=None`` enumerates every resample, each weighted by its
multinomial probability Q! / (prod_q c_q! Q^Q), which makes CI and p exact (Q <= 10).
"""
from __future__ import annotations

import itertools
import re
from math import factorial

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

UNPARSED = "<unparsed>"


def _pred(y_pred) -> list[str]:
    return [UNPARSED if p is None or (isinstance(p, float) and p != p) else p for p in y_pred]


def classification_metrics(y_true, y_pred, labels) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support, confusion matrix, parse failures."""
    labels, y_true, y_pred = list(labels), list(y_true), _pred(y_pred)
    if not y_true:
        raise ValueError("no examples to score")
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=[*labels, UNPARSED])
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class_f1": {c: float(v) for c, v in zip(labels, f)},
        "per_class": {c: {"precision": float(a), "recall": float(b), "f1": float(d), "support": int(e)}
                      for c, a, b, d, e in zip(labels, p, r, f, s)},
        "confusion_matrix": {"labels": [*labels, UNPARSED], "rows_true_cols_pred": cm[: len(labels)].tolist()},
        "parse_failure_rate": float(np.mean([y == UNPARSED for y in y_pred])),
        "n_examples": len(y_true),
    }


def metrics_from_confusion(cm: np.ndarray) -> tuple[float, float]:
    """(accuracy, macro-F1) of a K x (K+1) confusion matrix (rows true, last column unparsed)."""
    k = cm.shape[0]
    tp = np.diag(cm[:, :k]).astype(float)
    pred_tot, true_tot = cm[:, :k].sum(0), cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(pred_tot > 0, tp / pred_tot, 0.0)
        rec = np.where(true_tot > 0, tp / true_tot, 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    return float(tp.sum() / cm.sum()), float(f1.mean())


def grade_tv(confusion: dict) -> float:
    """Total variation between the predicted and the true grade distribution of a metrics entry's confusion
    matrix (rows true, columns predicted, the last column unparsed, a category no label has):
    TV = 1/2 sum_c |n_pred(c) - n_true(c)| / n. 0 = the grades are predicted in the labels' proportions; a model that
    always says one grade g has TV = 1 - share(g)."""
    cm = np.asarray(confusion["rows_true_cols_pred"], dtype=float)
    true = np.append(cm.sum(1), 0.0)
    return float(np.abs(cm.sum(0) - true).sum() / (2 * cm.sum()))


def chance_agreement(confusion: dict) -> dict[str, float]:
    """A read-out against an input-blind predictor with its own predicted-grade shares, from a metrics entry's
    confusion matrix (rows true, columns predicted, the last column unparsed, a category no label has). With n pairs,
    p_c the true and q_c the predicted share of grade c:

        kappa           = (p_o - p_e) / (1 - p_e),  p_o = trace / n,  p_e = sum_c p_c q_c
                          (Cohen's kappa; scikit-learn's ``cohen_kappa_score`` on the same pairs)
        chance_macro_f1 = mean over the K grades of 2 p_c q_c / (p_c + q_c)   (0 where p_c + q_c = 0)

    chance_macro_f1 is the macro-F1 of grades drawn independently of the pair with shares q_c (its precision on c is
    p_c, its recall q_c). A read-out whose grade does not depend on the pair has kappa ~ 0 and macro-F1 ~
    chance_macro_f1, whatever its shares: moving the predicted shares toward the labels' raises both macro-F1 and
    chance_macro_f1, telling the pairs apart raises kappa and macro-F1 - chance_macro_f1."""
    cm = np.asarray(confusion["rows_true_cols_pred"], dtype=float)
    k, n = cm.shape[0], cm.sum()
    p, q = cm.sum(1) / n, cm[:, :k].sum(0) / n
    p_o, p_e = np.trace(cm[:, :k]) / n, float(p @ q)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + q > 0, 2 * p * q / (p + q), 0.0)
    return {"kappa": float((p_o - p_e) / (1 - p_e)) if p_e < 1 else 0.0, "chance_macro_f1": float(f1.mean())}


def grade_auroc(y_true, probs: pd.DataFrame, labels) -> dict[str, float]:
    """How well a read-out's probabilities rank the pairs of each grade above the others, whatever its argmax:
    ``{c: roc_auc_score(y == c, probs["p_" + c])}`` for each grade c of ``labels`` (NaN where every pair or none is
    c). 0.5: P(c) no higher on the c pairs than on the rest."""
    y = np.asarray(list(y_true))
    return {c: float(roc_auc_score(y == c, probs[f"p_{c}"])) if 0 < (y == c).sum() < len(y) else float("nan")
            for c in labels}


def per_group_confusion(y_true, y_pred, groups, labels) -> tuple[list, np.ndarray]:
    """One K x (K+1) confusion matrix per group: (group ids, array [G, K, K+1])."""
    labels, y_pred = list(labels), _pred(y_pred)
    cols = {c: i for i, c in enumerate([*labels, UNPARSED])}
    ids = sorted(set(groups), key=str)
    gi = {g: i for i, g in enumerate(ids)}
    out = np.zeros((len(ids), len(labels), len(labels) + 1), dtype=np.int64)
    for t, p, g in zip(y_true, y_pred, groups):
        out[gi[g], cols[t], cols.get(p, len(labels))] += 1
    return ids, out


def bootstrap_ci(y_true, y_pred, groups, labels, n_samples: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> dict[str, list[float]]:
    """Percentile CIs of accuracy and macro-F1, resampling ``groups`` (queries) with replacement."""
    _, cms = per_group_confusion(y_true, y_pred, groups, labels)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(cms), np.full(len(cms), 1 / len(cms)), size=n_samples)
    reps = np.array([metrics_from_confusion(np.tensordot(c, cms, axes=1)) for c in counts])
    lo, hi = 100 * alpha / 2, 100 * (1 - alpha / 2)
    return {"accuracy_ci": np.percentile(reps[:, 0], [lo, hi]).tolist(),
            "macro_f1_ci": np.percentile(reps[:, 1], [lo, hi]).tolist()}


def query_resamples(n_groups: int, n_samples: int | None = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(counts [R, n_groups], weights [R] summing to 1) of bootstrap resamples of ``n_groups`` groups: ``n_samples``
    seeded multinomial draws (equal weights), or with ``n_samples=None`` every distinct resample with its probability."""
    if n_samples is not None:
        counts = np.random.default_rng(seed).multinomial(n_groups, np.full(n_groups, 1 / n_groups), size=n_samples)
        return counts, np.full(n_samples, 1 / n_samples)
    if n_groups > 10:
        raise ValueError(f"exact enumeration of {n_groups} groups is too large; pass n_samples")
    counts = np.array([np.bincount(c, minlength=n_groups)
                       for c in itertools.combinations_with_replacement(range(n_groups), n_groups)])
    weights = np.array([factorial(n_groups) / np.prod([factorial(int(k)) for k in c]) for c in counts])
    return counts, weights / n_groups ** n_groups


def paired_bootstrap(y_true, pred_a, pred_b, groups, labels, n_samples: int | None = 1000, seed: int = 0,
                     alpha: float = 0.05) -> dict:
    """Difference A - B of accuracy and macro-F1 with its percentile CI and two-sided p-value, resampling
    ``groups`` (queries) with the same resample for both methods (module doc)."""
    ids, cm_a = per_group_confusion(y_true, pred_a, groups, labels)
    _, cm_b = per_group_confusion(y_true, pred_b, groups, labels)
    counts, w = query_resamples(len(ids), n_samples, seed)
    obs = np.subtract(metrics_from_confusion(cm_a.sum(0)), metrics_from_confusion(cm_b.sum(0)))
    reps = np.array([np.subtract(metrics_from_confusion(np.tensordot(c, cm_a, axes=1)),
                                 metrics_from_confusion(np.tensordot(c, cm_b, axes=1))) for c in counts])
    out = {"n_queries": len(ids), "n_samples": n_samples or len(counts), "exact": n_samples is None}
    for j, name in enumerate(("accuracy", "macro_f1")):
        ci, p = _percentile_test(float(obs[j]), reps[:, j], w, alpha)
        out.update({f"{name}_diff": float(obs[j]), f"{name}_diff_ci": ci, f"{name}_p": p})
    return out


def _percentile_test(d: float, reps: np.ndarray, w: np.ndarray, alpha: float) -> tuple[list[float], float]:
    """(the weighted percentile CI of the resampled differences ``reps`` with weights ``w``, the two-sided
    p = P(|d* - d| >= |d|) of the observed difference ``d``, ties counting as extreme)."""
    ci = np.quantile(reps, [alpha / 2, 1 - alpha / 2], weights=w, method="inverted_cdf")
    extreme = np.abs(reps - d) >= abs(d) - 1e-12
    return [float(x) for x in ci], float(min(1.0, w[extreme].sum()))


def paired_ratio_bootstrap(num_a, den_a, num_b, den_b, n_samples: int | None = 1000, seed: int = 0,
                           alpha: float = 0.05) -> dict:
    """Difference A - B of two pooled rates, sum(num) / sum(den) over groups (e.g. right steps / judged steps per
    query), with its percentile CI and two-sided p-value, resampling the groups with the same resample for both
    (as :func:`paired_bootstrap`): d* = (c . num_a) / (c . den_a) - (c . num_b) / (c . den_b) for each resample's
    counts c; p = P(|d* - d| >= |d|). A resample whose denominators sum to 0 is left out (weights renormalised)."""
    arrays = [np.asarray(x, float) for x in (num_a, den_a, num_b, den_b)]
    if len({len(x) for x in arrays}) != 1 or not len(arrays[0]):
        raise ValueError("paired_ratio_bootstrap needs four arrays of one non-zero length (one entry per group)")
    na, da, nb, db = arrays
    if da.sum() == 0 or db.sum() == 0:
        raise ValueError("a rate over nothing: every denominator is 0")
    counts, w = query_resamples(len(na), n_samples, seed)
    ok = (counts @ da > 0) & (counts @ db > 0)
    counts, w = counts[ok], w[ok] / w[ok].sum()
    d = float(na.sum() / da.sum() - nb.sum() / db.sum())
    ci, p = _percentile_test(d, counts @ na / (counts @ da) - counts @ nb / (counts @ db), w, alpha)
    return {"diff": d, "diff_ci": ci, "p": p, "n_groups": len(na), "n_samples": n_samples or len(counts),
            "exact": n_samples is None}


TRAINED_FROM_SFT = ("dpo", "grpo", "srpo", "agrl")  # methods that start from the SFT model
ON_GRPO = ("srpo", "agrl")  # methods whose goal is stated against GRPO (same variant, seed and read-out)
_METHOD = re.compile(r"^(?P<family>sft|dpo|grpo|srpo|agrl)(?P<variant>(?:_(?!s\d|first_token$|cumpt$|prior$|probe$)[a-z][a-z0-9]*)*)"
                     r"(?:_s(?P<seed>\d+))?(?P<readout>_first_token|_cumpt|_prior|_probe)?$")


def parse_method(name: str) -> dict | None:
    """Split a method key of ``metrics.json`` into its parts, or None for any other key (``lexical``,
    ``zero_shot``...): ``<family>[_<variant>][_s<seed>][_first_token|_cumpt|_prior|_probe]`` ->
    ``{family, variant, seed, readout}``, e.g. ``srpo_bal_s1_first_token`` -> ``("srpo", "_bal", 1,
    "_first_token")`` and ``sft_steps_first`` -> ``("sft", "_steps_first", 0, "")`` (seed 0 is unsuffixed; the
    decoded read-out has no suffix). The one parser of run names: significance pairs and the RL table use it;
    :func:`method_key` is its inverse."""
    m = _METHOD.match(name)
    return m and {"family": m["family"], "variant": m["variant"], "seed": int(m["seed"] or 0),
                  "readout": m["readout"] or ""}


def method_key(family: str, variant: str = "", seed: int = 0, readout: str = "") -> str:
    """The key :func:`parse_method` splits: ``<family><variant>[_s<seed>]<readout>``, seed 0 unsuffixed."""
    return family + variant + (f"_s{seed}" if seed else "") + readout


def default_pairs(methods) -> list[tuple[str, str]]:
    """Pairs to test, in this order: every method against ``lexical``; each method trained from the SFT model
    (``<family>[_<variant>][_s<seed>][_first_token|_cumpt]``, family in ``TRAINED_FROM_SFT``) against ``sft`` in
    the same read-out; SRPO and AGRL against GRPO of the same variant, seed and read-out; each CumPT, each
    prior-corrected and each grade-probe read-out against its argmax read-out."""
    methods = list(methods)
    have = set(methods)
    pairs = [(m, "lexical") for m in methods if m != "lexical" and "lexical" in have]
    names = [(m, r) for m in methods if (r := parse_method(m)) and r["family"] in TRAINED_FROM_SFT]
    pairs += [(m, method_key("sft", readout=r["readout"])) for m, r in names
              if method_key("sft", readout=r["readout"]) in have]
    for m, r in names:
        partner = method_key(**{**r, "family": "grpo"})
        if r["family"] in ON_GRPO and partner in have:
            pairs.append((m, partner))
    for tail in ("_cumpt", "_prior", "_probe"):
        pairs += [(m, m[: -len(tail)] + "_first_token") for m in methods
                  if m.endswith(tail) and m[: -len(tail)] + "_first_token" in have]
    return pairs


def significance_table(preds: pd.DataFrame, pairs, words, n_samples: int | None = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (A, B) of ``pairs``: :func:`paired_bootstrap` of A - B over queries (``preds`` has ``label``,
    ``query`` and one prediction column per method, NaN where a method has none), on the pairs both predicted."""
    rows = []
    for a, b in pairs:
        m = preds[preds[a].notna() & preds[b].notna()]
        r = paired_bootstrap(m["label"], m[a], m[b], m["query"].str.lower(), words, n_samples, seed)
        rows.append({"A": a, "B": b, "pairs": len(m), "queries": r["n_queries"],
                     **{f"{k} {s}": v for k in ("accuracy", "macro_f1") for s, v in (
                         ("A-B", round(r[f"{k}_diff"], 3)),
                         ("95% CI", "[{:.3f}, {:.3f}]".format(*r[f"{k}_diff_ci"])), ("p", round(r[f"{k}_p"], 3)))}})
    return pd.DataFrame(rows)
