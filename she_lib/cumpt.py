"""CumPT, cumulative-probability tiering (TaoSR1): one threshold turns grade probabilities into a grade.

For one pair with grade probabilities p_1..p_K ordered from the top grade down (ESCI: Exact, Substitute,
Complement, Irrelevant; the first-token read-out of she_lib.inference, stored as ``p_<grade>`` in the
``first_token`` prediction caches), renormalised to sum to 1,

    C_k  = p_1 + ... + p_k                 P(grade >= w_k), accumulated from the top grade down
    k*   = min { k < K : C_k >= beta }     the first (highest) grade whose cumulative probability reaches beta
    k*   = K                               if no such k (C_K = 1, up to rounding: the lowest grade)
    pred = w_{k*}

for one threshold beta in (0, 1]. A small beta answers high grades readily, a large one asks for more mass.
It differs from the argmax: (0.4, 0.1, 0.5) is Exact at beta 0.4, Substitute at 0.5, Complement above.

Trade-off. For every cut w_k (k < K) the binary decision "grade >= w_k" is taken iff C_k >= beta, so as beta
grows fewer pairs pass: the sweep reports, per beta, accuracy, macro-F1 and for each cut the precision and
recall of "grade >= w_k" against "human grade >= w_k" (``precision@Exact`` is the top grade alone,
``precision@Substitute`` the relevant tiers Exact + Substitute; precision is NaN when nothing passes).

Tuning: beta is the grid point with the highest validation macro-F1 (the smallest such beta on a tie), and
is then applied unchanged to the test split. Validation read-outs cover the first
``VALIDATION_PAIRS_PER_QUERY`` pairs of every validation query (predictions.per_query; cached like any read-out).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .labels import get_scale
from .metrics import metrics_from_confusion
from .predictions import cached_predictions, per_query, predict_llm, prediction_cache, read_predictions
from .results import score

BETAS = np.round(np.arange(0.01, 1.0, 0.01), 2)  # the default grid, 0.01 .. 0.99
VALIDATION_PAIRS_PER_QUERY = 8


def cumulative(probs) -> np.ndarray:
    """[n, K] C_k of the module doc (rows renormalised to sum to 1)."""
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or not len(p) or (p < 0).any() or not np.isfinite(p).all() or (p.sum(1) <= 0).any():
        raise ValueError("probabilities must be a non-empty [n, K] array, finite, >= 0, each row summing to > 0")
    return np.cumsum(p / p.sum(1, keepdims=True), axis=1)


def cumpt_indices(probs, beta: float) -> np.ndarray:
    """k* - 1 of the module doc for every row (0 = the top grade)."""
    if not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    reached = cumulative(probs)[:, :-1] >= beta
    return np.where(reached.any(1), reached.argmax(1), reached.shape[1])


def cumpt_predict(probs, beta: float, words) -> list[str]:
    """The CumPT grade word of every row; ``words`` are the grades from the top down, one per column."""
    words = list(words)
    if np.shape(probs)[-1] != len(words):
        raise ValueError(f"{np.shape(probs)[-1]} probability columns for {len(words)} grades")
    return [words[i] for i in cumpt_indices(probs, beta)]


def confusion(y_idx: np.ndarray, pred_idx: np.ndarray, k: int) -> np.ndarray:
    """K x (K+1) confusion of grade indices (metrics.metrics_from_confusion's layout)."""
    cm = np.zeros((k, k + 1), dtype=np.int64)  # the K x (K+1) layout of metrics (no unparsed column used)
    np.add.at(cm, (y_idx, pred_idx), 1)
    return cm


def tier_scores(cm: np.ndarray, words) -> dict[str, float]:
    """Precision and recall of "grade >= w_k" for every cut k < K from a confusion matrix (rows true, columns
    predicted, top grade first): precision = cm[:k, :k].sum() / cm[:, :k].sum(), recall = ... / cm[:k].sum()."""
    out = {}
    for k, w in enumerate(list(words)[:-1], start=1):
        tp, pos, true = cm[:k, :k].sum(), cm[:, :k].sum(), cm[:k].sum()
        out[f"precision@{w}"] = tp / pos if pos else float("nan")
        out[f"recall@{w}"] = tp / true if true else float("nan")
    return out


def sweep(probs, y_true, words, betas=BETAS) -> pd.DataFrame:
    """One row per beta: accuracy, macro-F1 (she_lib.metrics conventions) and each cut's precision / recall."""
    words = list(words)
    y_idx = np.array([words.index(y) for y in y_true])
    rows = []
    for beta in np.sort(np.asarray(betas, dtype=float)):
        cm = confusion(y_idx, cumpt_indices(probs, float(beta)), len(words))
        acc, mf1 = metrics_from_confusion(cm)
        rows.append({"beta": float(beta), "accuracy": acc, "macro_f1": mf1, **tier_scores(cm, words)})
    return pd.DataFrame(rows)


def tune_beta(probs, y_true, words, betas=BETAS) -> tuple[float, pd.DataFrame]:
    """(the beta of highest macro-F1, the smallest on a tie; the sweep it was chosen from, by increasing beta)."""
    table = sweep(probs, y_true, words, betas)
    return float(table.loc[table["macro_f1"].idxmax(), "beta"]), table


def argmax_point(probs, y_true, words) -> dict[str, float]:
    """The argmax read-out's accuracy, macro-F1 and cut precision / recall (to place it on the CumPT curves)."""
    words = list(words)
    cm = confusion(np.array([words.index(y) for y in y_true]), np.asarray(probs).argmax(1), len(words))
    acc, mf1 = metrics_from_confusion(cm)
    return {"accuracy": acc, "macro_f1": mf1, **tier_scores(cm, words)}


def probabilities(preds: pd.DataFrame, words) -> np.ndarray:
    """[n, K] from a first-token prediction frame's ``p_<word>`` columns."""
    return preds[[f"p_{w}" for w in words]].to_numpy(dtype=float)


# ------------------------------------------------------------------------------------ on saved runs
def validation_predictions(profile, folder: str | Path, df: pd.DataFrame) -> pd.DataFrame:
    """First-token read-outs of the model of ``folder`` (``zero_shot``: the base model; else a policy run) on
    ``df``, cached in ``folder`` under the validation split's name (computed once, then read)."""
    folder, prof = Path(folder), profile.replace(eval_split="validation")
    cache = prediction_cache(folder, prof, "first_token")
    done = cached_predictions(cache)
    if all(e in done for e in df["example_id"]):
        return pd.DataFrame([done[e] for e in df["example_id"]])
    from .modeling import load_policy, load_run

    policy = load_policy(profile) if folder.name == "zero_shot" else load_run(folder, profile)
    return predict_llm(policy.model, policy.tokenizer, df, prof, "first_token", cache, progress=False)


def evaluate_cumpt(profile, folder: str | Path, test: pd.DataFrame, validation: pd.DataFrame,
                   betas=BETAS, seconds: float | None = None) -> dict:
    """CumPT on the first-token read-out of ``folder``: beta tuned on ``validation`` (its first
    VALIDATION_PAIRS_PER_QUERY pairs per query), applied to the cached test read-out. Returns the metrics
    entry (results.score; ``seconds``: pass the read-out's own, CumPT adds nothing measurable), the chosen beta, both sweeps and the argmax
    point; the test predictions are cached as ``predictions_<split>_cumpt_<order>.jsonl``."""
    folder, words = Path(folder), get_scale(profile.grade_scale).words
    test_preds = read_predictions(prediction_cache(folder, profile, "first_token")).loc[test["example_id"]]
    val = per_query(validation, VALIDATION_PAIRS_PER_QUERY)
    val_preds = validation_predictions(profile, folder, val)
    beta, val_sweep = tune_beta(probabilities(val_preds, words), val["label"], words, betas)
    p_test = probabilities(test_preds, words)
    preds = pd.DataFrame({"example_id": test["example_id"].to_numpy(), "pred": cumpt_predict(p_test, beta, words),
                          "beta": beta})
    preds.to_json(prediction_cache(folder, profile, "cumpt"), orient="records", lines=True)
    base = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
    metrics = score(test, preds, profile, split=profile.eval_split, model=str(folder), scoring="cumpt", beta=beta,
                    beta_tuned_on=f"validation, {len(val)} pairs ({VALIDATION_PAIRS_PER_QUERY} per query)",
                    seconds=seconds, run=base)
    return {"metrics": metrics, "beta": beta, "validation": val_sweep,
            "test": sweep(p_test, test["label"], words, betas), "argmax": argmax_point(p_test, test["label"], words)}


def plot_cumpt(curves: dict[str, dict], words, path: str | Path | None = None):
    """Test precision-recall of the top grade and of the relevant tiers (top two grades) as beta sweeps, one
    line per method (dot: tuned beta; cross: argmax read-out), and macro-F1 against beta (dashed: validation)."""
    import matplotlib.pyplot as plt

    words = list(words)
    cuts = words[:2] if len(words) > 2 else words[:1]
    fig, axes = plt.subplots(1, len(cuts) + 1, figsize=(4.6 * (len(cuts) + 1), 4))
    for i, (name, c) in enumerate(sorted(curves.items())):
        colour = f"C{i}"
        test, at = c["test"], c["test"].set_index("beta").loc[c["beta"]]
        for ax, w in zip(axes, cuts):
            ax.plot(test[f"recall@{w}"], test[f"precision@{w}"], color=colour, lw=1.2, label=name)
            ax.plot(at[f"recall@{w}"], at[f"precision@{w}"], "o", color=colour)
            ax.plot(c["argmax"][f"recall@{w}"], c["argmax"][f"precision@{w}"], "x", color=colour, ms=8)
        axes[-1].plot(test["beta"], test["macro_f1"], color=colour)
        axes[-1].plot(c["validation"]["beta"], c["validation"]["macro_f1"], "--", color=colour)
        axes[-1].axvline(c["beta"], color=colour, lw=0.8, alpha=0.6)
    for ax, w in zip(axes, cuts):
        tiers = " or ".join(words[: words.index(w) + 1])
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title=f"grade {tiers} (test)")
    axes[0].legend(fontsize=7, title="o tuned beta, x argmax", title_fontsize=7)
    axes[-1].set(xlabel="beta", ylabel="macro-F1", xlim=(0, 1))
    axes[-1].set_title("macro-F1 vs beta (solid: test, dashed: validation)", fontsize=10)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig
