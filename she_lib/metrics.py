"""Classification metrics with query-level bootstrap confidence intervals.

Predictions that could not be parsed are ``None``; they are mapped to the extra column UNPARSED of the
confusion matrix, so they count as a miss for the true class (recall) and for no class's precision.
Macro-F1 is the unweighted mean of the per-class F1 over the scale's grades (scikit-learn's
``f1_score(..., labels=grades, average="macro", zero_division=0)``).

Bootstrap (:func:`bootstrap_ci`): queries are resampled with replacement (pairs of one query are not
independent); each replicate's confusion matrix is the sum of its queries' confusion matrices, which is
exact and fast; the interval is the (alpha/2, 1-alpha/2) percentile of the replicate metric.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

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
