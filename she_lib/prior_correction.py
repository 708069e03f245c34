"""Prior-corrected read-out: per-grade biases on the first-token log-probabilities, tuned for macro-F1.

A model trained on ESCI learns its prior (half the pairs are Exact, ~3% Complement), and the argmax of its grade
probabilities rarely names a rare grade even when the model ranks that grade higher for the right pairs. With
p_k the first-token probability of grade k (``p_<grade>`` in a ``first_token`` prediction cache) and one bias b_k
per grade (b_1 = 0: only differences matter),

    pred = argmax_k ( log p_k + b_k )

b = (0, b_2, .., b_K) maximises macro-F1 on validation read-outs by coordinate ascent: starting from b = 0, each
round sets each b_k (k >= 2) in turn to the grid value with the highest validation macro-F1, the others fixed;
on a tie the value nearest 0 (the least correction) wins; ``rounds`` rounds or until nothing changes. b is then
applied unchanged to every test set (the esci_us test split and any extra folder). b_k = -log prior_k is the
classic prior shift; tuning for the metric also covers a model that is miscalibrated per grade.

Config fields (:class:`PriorCorrectionConfig`): the grid, the rounds, and how many validation pairs per query the
read-outs cover (the first-token cache is shared with CumPT, which reads a subset of it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .cumpt import confusion, probabilities, validation_predictions
from .labels import get_scale
from .metrics import metrics_from_confusion
from .predictions import per_query, prediction_cache, read_predictions
from .results import score


@dataclass(frozen=True)
class PriorCorrectionConfig:
    grid: tuple[float, ...] = field(default_factory=lambda: tuple(np.round(np.arange(-4.0, 4.01, 0.25), 2)))
    rounds: int = 3
    # validation pairs per query the biases are tuned on (evaluate.per_query, seeded hash order; None = all): CumPT's
    # 8 by default, so the read-outs are shared and the correction costs no model call; more pairs, steadier biases
    validation_pairs_per_query: int | None = 8


def corrected(probs, biases) -> np.ndarray:
    """Grade indices argmax_k(log p_k + b_k) for an [n, K] probability array (zeros are floored at 1e-12)."""
    return (np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, None)) + np.asarray(biases, float)).argmax(1)


def index_macro_f1(y_idx: np.ndarray, pred_idx: np.ndarray, k: int) -> float:
    """Macro-F1 of grade indices ``pred_idx`` against ``y_idx`` over ``k`` grades (metrics_from_confusion)."""
    return metrics_from_confusion(confusion(y_idx, pred_idx, k))[1]


def tune_biases(probs, y_true, words, config: PriorCorrectionConfig | None = None) -> tuple[np.ndarray, float]:
    """Biases (length K, b_1 = 0) maximising macro-F1 of :func:`corrected` on (probs, y_true) by coordinate
    ascent (module docstring); returns them and the macro-F1 they reach."""
    config = config or PriorCorrectionConfig()
    probs, words = np.asarray(probs, dtype=float), list(words)
    y = np.array([words.index(v) for v in y_true])
    k = len(words)
    grid = sorted(config.grid, key=lambda g: (abs(g), g))  # candidates nearest 0 first: a tie keeps the smallest
    b = np.zeros(k)
    best = index_macro_f1(y, corrected(probs, b), k)
    for _ in range(config.rounds):
        changed = False
        for j in range(1, k):
            for g in grid:
                trial = b.copy()
                trial[j] = g
                f = index_macro_f1(y, corrected(probs, trial), k)
                if f > best + 1e-12:
                    best, b, changed = f, trial, True
        if not changed:
            break
    return b, best


def evaluate_prior_corrected(profile, folder: str | Path, test: pd.DataFrame, validation: pd.DataFrame,
                             extra: tuple = (), config: PriorCorrectionConfig | None = None) -> dict:
    """The prior-corrected read-out of the first-token cache of ``folder``: biases tuned on the validation
    read-outs (computed and cached once, like CumPT's), applied to ``test`` and to every ``(profile, frame)`` of
    ``extra`` whose first-token read-out is cached. Returns {"biases", "validation_macro_f1", "metrics": {split:
    evaluate.score entry}}; the test predictions are cached as ``predictions_<split>_prior_<order>.jsonl``."""
    config = config or PriorCorrectionConfig()
    folder, words = Path(folder), get_scale(profile.grade_scale).words
    val = per_query(validation, config.validation_pairs_per_query)
    val_preds = validation_predictions(profile, folder, val)
    biases, val_f1 = tune_biases(probabilities(val_preds, words), val["label"], words, config)
    base = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
    out = {"biases": dict(zip(words, biases.round(3).tolist())), "validation_macro_f1": val_f1, "metrics": {}}
    for prof, df in ((profile, test), *extra):
        cache = prediction_cache(folder, prof, "first_token")
        if cache is None or not cache.exists():
            continue
        cached = read_predictions(cache)
        if not df["example_id"].isin(cached.index).all():
            continue
        p = probabilities(cached.loc[df["example_id"]], words)
        preds = pd.DataFrame({"example_id": df["example_id"].to_numpy(),
                              "pred": np.array(words)[corrected(p, biases)]})
        preds.to_json(prediction_cache(folder, prof, "prior"), orient="records", lines=True)
        out["metrics"][prof.eval_split] = score(
            df, preds, prof, split=prof.eval_split, model=str(folder), scoring="prior_corrected", run=base,
            biases=out["biases"], biases_tuned_on=f"validation, {len(val)} pairs "
                                                 f"({config.validation_pairs_per_query} per query)")
    return out
