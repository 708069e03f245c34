"""The results table: a method's metrics entry (:func:`score`), ``metrics.json`` (:func:`save_metrics`), and
``summary.md`` with the confusion figure (:func:`write_summary`).

Every method lands in ``metrics.json`` as ``{method: {accuracy, macro_f1, macro_f1_ci, accuracy_ci,
per_class_f1, per_class, confusion_matrix, parse_failure_rate, n_examples, n_queries, split, profile,
model, scoring, seconds, examples_per_second, machine}}``.
"""
from __future__ import annotations

import fcntl
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Profile
from .labels import get_scale
from .metrics import bootstrap_ci, classification_metrics
from .provenance import current_run, in_job, machine, run_labels
from .rules import rule_violation_rate
from .verifier import step_accuracy


def score(df: pd.DataFrame, preds: pd.DataFrame, profile: Profile, **info) -> dict:
    """Metrics of ``preds`` (example_id, pred) against ``df`` with query-bootstrap CIs."""
    scale = get_scale(profile.grade_scale)
    m = df[["example_id", "label", "query"]].merge(preds, on="example_id", how="left", validate="1:1")
    pred = m["pred"].where(m["pred"].notna(), None).tolist()
    groups = m["query"].str.lower().tolist()
    out = classification_metrics(m["label"], pred, scale.words)
    out.update(bootstrap_ci(m["label"], pred, groups, scale.words, profile.bootstrap_samples, profile.seed))
    out.update(n_queries=len(set(groups)), profile=profile.name, machine=machine(), **info)
    if "well_formed" in m.columns:
        out["well_formed_rate"] = float(m["well_formed"].fillna(False).mean())
    if "completion" in m.columns:  # decoded rationales: step accuracy (verifier) and rule adherence (AGRL's rules)
        full = df.merge(preds[["example_id", "completion"]], on="example_id", how="left", validate="1:1")
        out.update(step_accuracy(full, full["completion"], scale))
        rules = rule_violation_rate(full, full["completion"], scale)
        out.update({k: v for k, v in rules.items() if k.startswith(("rule_violation", "violation_rate/"))})
    return out


def load_metrics(results_dir: str | Path) -> dict:
    """``results_dir/metrics.json``, or {} where there is none."""
    path = Path(results_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_metrics(results_dir: str | Path, method: str, metrics: dict) -> Path:
    """Merge ``{method: metrics}`` into ``results_dir/metrics.json`` (other methods are kept; an exclusive
    lock on ``metrics.lock`` beside it serialises writers). The row is stamped with the run that wrote it
    (``made_by``: she_lib.provenance) unless it carries one already."""
    path = Path(results_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:  # runs in parallel lanes write the same file
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[method] = {**metrics, "made_by": metrics.get("made_by") or current_run()}
        path.write_text(json.dumps(data, indent=2, sort_keys=True))
    return path


def plot_confusion(metrics: dict, title: str, path: str | Path | None = None, ax=None):
    """Row-normalised confusion matrix (rows true, columns predicted, last column unparsed)."""
    import matplotlib.pyplot as plt

    cm = np.array(metrics["confusion_matrix"]["rows_true_cols_pred"], dtype=float)
    labels = metrics["confusion_matrix"]["labels"]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(cm)), labels[: len(cm)])
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("human label")
    ax.set_title(title)
    if path:
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=120)
    return ax


def _round(x, n: int = 3):
    return None if x is None else round(x, n)


def summary_table(results: dict[str, dict], words, current: str | None = None) -> pd.DataFrame:
    """One row per method: accuracy, macro-F1 with its CI, per-class F1, parse failures, step accuracy (verifier)
    and rule-violation rate of decoded rationales, sizes, wall seconds of the prediction, ``ms / pair`` =
    1000 seconds / pairs (batched throughput: amortised latency per pair) and ``run``, the run that made the row
    (she_lib.provenance.run_labels; with ``current``, rows of other runs are marked "not this run")."""
    labels, _ = run_labels(results, current)
    rows = []
    for name, m in results.items():
        lo, hi = m["macro_f1_ci"]
        rows.append({"method": name, "accuracy": round(m["accuracy"], 3), "macro-F1": round(m["macro_f1"], 3),
                     "macro-F1 95% CI": f"[{lo:.3f}, {hi:.3f}]",
                     **{f"F1 {w}": round(m["per_class_f1"][w], 3) for w in words},
                     "parse failures": round(m["parse_failure_rate"], 3),
                     "step accuracy": _round(m.get("step_accuracy")), "rule violations": _round(m.get("rule_violation_rate")),
                     "pairs": m["n_examples"],
                     "queries": m["n_queries"], "seconds": m.get("seconds"),
                     "ms / pair": None if m.get("seconds") is None else round(1000 * m["seconds"] / m["n_examples"], 1),
                     "run": labels[name]})
    return pd.DataFrame(rows).set_index("method")


def write_summary(results_dir: str | Path, words, current: str | None = None) -> pd.DataFrame:
    """From every method in ``metrics.json``: ``summary.md`` (the table, then the runs that made its rows: id,
    command, commit, machine, start) and ``figures/05_confusion.png`` (one confusion matrix per method).
    ``current`` is the run whose report this is (default: the job's, inside a job that set ``$SHE_RUN``, e.g. the
    notebook runner); rows it did not make are marked in the ``run`` column."""
    import matplotlib.pyplot as plt

    results_dir = Path(results_dir)
    data = json.loads((results_dir / "metrics.json").read_text())
    data = {k: m for k, m in data.items() if "macro_f1_ci" in m}  # classifiers only (not e.g. ``genrm``)
    current = current if current is not None else (current_run()["id"] if in_job() else None)
    table = summary_table(data, words, current)
    _, runs = run_labels(data, current)
    legend = "\n".join(f"- {r['label']}{' (this run)' if r['id'] == current else ''}: `{r['command']}` at commit "
                        f"{r['commit']}, {r['started']}, on {r['machine']}" for r in runs)
    if any(m.get("made_by") is None for m in data.values()):
        legend += "\n- unrecorded: rows written before rows carried their run (machine: " + "; ".join(
            sorted({m.get("machine", "?") for m in data.values() if m.get("made_by") is None})) + ")"
    note = ("" if current is None else
            "\n\nRows marked *not this run* were made by another command and kept in metrics.json; they are not "
            "results of this run.")
    (results_dir / "summary.md").write_text(table.to_markdown() + note + "\n\nRuns that made these rows:\n"
                                            + legend + "\n")
    fig, axes = plt.subplots(1, len(data), figsize=(5 * len(data), 4), squeeze=False)
    for ax, (name, m) in zip(axes[0], sorted(data.items())):
        plot_confusion(m, name, ax=ax)
    fig.tight_layout()
    (results_dir / "figures").mkdir(exist_ok=True)
    fig.savefig(results_dir / "figures" / "05_confusion.png", dpi=110)
    plt.close(fig)
    return table
