"""The GenRM job's data and held-out evaluation; :func:`she_lib.genrm.run_genrm` runs the steps in order
(``python -m she_lib.genrm``, notebook 03).

1. :func:`build_data` - train rows from the train split (teacher + corruptions + verifier-labelled policy
   samples; a row's undecided steps carry no target, she_lib.genrm_data), held-out rows from the validation split (the same sources; policy steps labelled
   where the verifier decides). The test split is never read. Policy samples come from the SFT run
   ``runs_dir/<policy_run>``; without it there are none (or the base model's, ``policy_base_fallback``).
2. ``genrm.train_genrm`` - resumable run folder ``runs_dir/<name>``.
3. :func:`step_metrics` / :func:`evaluate_genrm` - AUROC of P(incorrect) = 1 - P(correct) against the verifier's
   label, step accuracy, F1 (``incorrect`` positive), ECE, Brier and the reliability curve
   (``sklearn.calibration.calibration_curve``, uniform bins) over the labelled held-out steps; ECE = sum_b |B_b|/N
   |acc_b - conf_b|. The headline fields are on the held-out *policy* steps (the distribution RL feeds it), at a
   threshold tuned on the held-out teacher and corruption steps (``GenRMConfig.threshold`` "tuned": the best F1 on
   ``incorrect``); ``all`` holds the same over every held-out step. :func:`undecided_sample` prints held-out policy
   rationales with steps the verifier leaves undecided and the GenRM's verdicts on them, for a reader to judge.
4. :func:`examiner_report` - the hybrid examiner on the held-out rollouts: verifier coverage, GenRM-verifier
   agreement (the step scores of 3 reused, ``score_all``), and the measured cost per 1,000 rationales of
   the verifier alone and of the verifier_first examiner with the GenRM.
5. :func:`save_genrm_results` - ``metrics.json["genrm"]`` (merged, other keys kept), ``genrm_report.json``
   and ``figures/03_genrm_calibration.png`` under ``profile.results_dir``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import f1_score, roc_auc_score

from .config import Profile
from .examiner import Examiner, HybridConfig, TableScorer
from .genrm_data import decided, labelled_rows, policy_rows
from .labels import get_scale
from .modeling import load_policy, load_run
from .provenance import machine
from .results import save_metrics
from .sampling import sample_cache, sample_rationales
from .schema import STEPS

if TYPE_CHECKING:  # annotations only: she_lib.genrm imports this module
    from .genrm import GenRM, GenRMConfig


def load_policy_model(profile: Profile, run_name: str):
    """(model, tokenizer, source): the run ``runs_dir/run_name`` (``modeling.load_run``) if it exists, else the base."""
    run = Path(profile.runs_dir) / run_name
    if not (run / "adapter_config.json").exists():
        policy = load_policy(profile)
        return policy.model, policy.tokenizer, "base"
    policy = load_run(run, profile)
    return policy.model, policy.tokenizer, run_name


def build_data(profile: Profile, config: GenRMConfig, splits: dict, name: str = "genrm"):
    """(train rows, held-out rows, policy source). Policy samples go to the shared cache (sampling.sample_cache,
    tagged ``genrm_<split>_``): a resumed run reuses them, a retrained policy is sampled afresh."""
    scale = get_scale(profile.grade_scale)
    kinds = tuple(config.corruption_kinds)
    train = labelled_rows(splits["train"], config.teacher_pairs, config.corruptions_per_kind, config.seed,
                          profile.order, scale, kinds)
    held = labelled_rows(splits["validation"], config.eval_teacher_pairs, config.eval_corruptions_per_kind,
                         config.seed + 1, profile.order, scale, kinds)
    source = "none"
    have_run = (Path(profile.runs_dir) / config.policy_run / "adapter_config.json").exists()
    if (config.policy_prompts or config.eval_policy_prompts) and (have_run or config.policy_base_fallback):
        model, tok, source = load_policy_model(profile, config.policy_run)
        parts = {}
        for split, n in (("train", config.policy_prompts), ("validation", config.eval_policy_prompts)):
            df = splits[split].sample(n=min(n, len(splits[split])), random_state=config.seed)
            samples = sample_rationales(
                model, tok, df, profile, config.policy_samples, config.policy_max_new_tokens,
                config.policy_temperature, batch_size=profile.eval_batch_size, seed=config.seed,
                cache=sample_cache(profile, None if source == "base" else Path(profile.runs_dir) / config.policy_run,
                                   config.policy_samples, config.policy_max_new_tokens, config.policy_temperature,
                                   1.0, profile.eval_batch_size, config.seed, tag=f"genrm_{split}_"), progress=False)
            parts[split] = policy_rows(df.loc[df.index.repeat(config.policy_samples)],
                                       samples["completion"].tolist(), scale)
        train = pd.concat([train, decided(parts["train"])], ignore_index=True)
        held = pd.concat([held, parts["validation"]], ignore_index=True)
    return train, held, source


def step_metrics(labels, scores, threshold: float = 0.5, bins: int = 10) -> dict:
    """Accuracy, F1 and calibration over the labelled steps (label >= 0) of [n, len(STEPS)] arrays."""
    labels, scores = np.asarray(labels).reshape(-1, len(STEPS)), np.asarray(scores, float).reshape(-1, len(STEPS))
    mask = labels >= 0
    y, p, col = labels[mask].astype(int), scores[mask], np.nonzero(mask)[1]
    if not len(y):
        return {"n_steps": 0}
    pred = (p >= threshold).astype(int)
    b = np.clip(np.digitize(p, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    ece = sum(abs(y[b == k].mean() - p[b == k].mean()) * (b == k).mean() for k in range(bins) if (b == k).any())
    true, mean_p = calibration_curve(y, p, n_bins=bins) if len(set(y)) == 2 else ([], [])
    return {"n_steps": int(mask.sum()), "step_accuracy": float((pred == y).mean()),
            "step_auroc": float(roc_auc_score(1 - y, 1 - p)) if len(set(y)) == 2 else None,
            "step_f1": float(f1_score(y, pred, pos_label=0, zero_division=0)), "threshold": float(threshold),
            "step_macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
            "incorrect_rate": float(1 - y.mean()), "ece": float(ece), "brier": float(((p - y) ** 2).mean()),
            "per_step_accuracy": {s: float((pred[col == j] == y[col == j]).mean())
                                  for j, s in enumerate(STEPS) if (col == j).any()},
            "calibration": {"prob_pred": [float(x) for x in mean_p], "prob_true": [float(x) for x in true],
                            "bins": bins}}


def tune_threshold(labels, scores) -> float:
    """The threshold t on P(correct) (a step reads ``incorrect`` when P < t) with the best F1 on ``incorrect`` over
    the labelled steps of [n, steps] arrays; candidates are the midpoints of the sorted distinct scores (a tie keeps
    the threshold nearest 0.5); 0.5 without both verdicts."""
    labels, scores = np.asarray(labels).reshape(-1), np.asarray(scores, float).reshape(-1)
    y, p = labels[labels >= 0], scores[labels >= 0]
    if len(set(y.tolist())) < 2:
        return 0.5
    u = np.unique(p)
    cands = sorted(np.concatenate([(u[:-1] + u[1:]) / 2, [0.5]]), key=lambda t: abs(t - 0.5))
    f1 = [f1_score(y, (p >= t).astype(int), pos_label=0, zero_division=0) for t in cands]
    return float(cands[int(np.argmax(f1))])


def evaluate_genrm(genrm: GenRM, held: pd.DataFrame, config: GenRMConfig) -> tuple[dict, np.ndarray]:
    """(metrics over the held-out policy steps (every held-out step when none is labelled) at the configured or tuned
    threshold, ``all`` over every held-out step, ``per_origin``, the GenRM's own cost per 1,000 rationales; the
    [n, steps] scores)."""
    t0 = time.time()
    scores = genrm.score(held, held["rationale"].tolist())
    seconds = time.time() - t0
    labels = np.array(held["labels"].tolist())
    policy = (held["origin"] == "policy").to_numpy()
    policy = policy if (labels[policy] >= 0).any() else np.zeros(len(held), bool)  # no labelled policy step: all
    if config.threshold == "tuned":
        threshold = tune_threshold(labels[~policy], scores[~policy]) if (~policy).any() else 0.5
    else:
        threshold = float(config.threshold)
    main = policy if policy.any() else np.ones(len(held), bool)
    out = step_metrics(labels[main], scores[main], threshold, config.calibration_bins)
    out["steps_evaluated"] = "policy" if policy.any() else "all"
    out["all"] = {k: v for k, v in step_metrics(labels, scores, threshold).items() if k != "calibration"}
    out["genrm_seconds_per_1000"] = round(1000 * seconds / max(len(held), 1), 2)  # every rationale scored
    out["per_origin"] = {o: {k: v for k, v in step_metrics(labels[m], scores[m], threshold).items()
                             if k in ("n_steps", "step_accuracy", "step_f1", "step_auroc")}
                         for o in sorted(held["origin"].unique()) if (m := (held["origin"] == o).to_numpy()).any()}
    return out, scores


def undecided_sample(held: pd.DataFrame, scores: np.ndarray, n: int = 20, seed: int = 0) -> str:
    """Markdown: ``n`` held-out policy rationales (seeded) with a step the verifier leaves undecided, each with the
    pair, the human grade, the rationale and per step the verifier's label and the GenRM's P(correct)."""
    rows = [(i, r) for i, r in enumerate(held.to_dict("records")) if r["origin"] == "policy" and min(r["labels"]) < 0
            and isinstance(r["rationale"], str)]
    pick = [rows[k] for k in sorted(np.random.default_rng(seed).permutation(len(rows))[:n])]
    out = [f"# GenRM verdicts on steps the verifier leaves undecided ({len(pick)} of {len(rows)} held-out policy "
           "rationales with such a step)\n", "Verifier: 1 correct, 0 incorrect, - undecided (or missing). GenRM: "
           "P(correct); the GenRM decides the undecided steps in SRPO's hybrid examiner.\n"]
    for i, r in pick:
        out.append(f"## {r['query']} / {r.get('title', '')[:90]}\nhuman grade: **{r['label']}**\n\n```\n"
                   f"{r['rationale'].strip()}\n```\n")
        out.append("| step | verifier | GenRM P(correct) |\n|---|---|---|")
        out += [f"| {s} | {'-' if v < 0 else v} | {scores[i, j]:.2f} |"
                for j, (s, v) in enumerate(zip(STEPS, r["labels"]))]
        out.append("")
    return "\n".join(out)


def examiner_report(held: pd.DataFrame, scores: np.ndarray, genrm: GenRM | None, profile: Profile) -> dict:
    """Coverage and agreement (score_all, reusing ``scores``) overall and per origin; the cost of the verifier
    alone and of the default verifier_first examiner with ``genrm`` (timed here) per 1,000 rationales."""
    rows, scale = held.to_dict("records"), profile.grade_scale
    table = {(r["example_id"], r["rationale"]): s for r, s in zip(rows, scores)}
    exam = Examiner(TableScorer(table), HybridConfig(score_all=True), scale).examine(rows)
    keep = ("rollouts", "steps_judged", "verifier_coverage", "agreement", "agreement_steps", "correct_rate",
            "well_formed_rate", "rollouts_with")
    out = {k: v for k, v in exam.report().items() if k in keep}
    out["by_origin"] = {o: {k: v for k, v in exam.select(held["origin"].to_numpy() == o).report().items() if k in keep}
                        for o in sorted(held["origin"].unique())}
    verifier_only = Examiner(None, HybridConfig(), scale).examine(rows).report()
    out["verifier_seconds_per_1000"] = verifier_only["seconds_per_1000"]
    if genrm is not None:
        hybrid = Examiner(genrm, HybridConfig(), scale).examine(rows).report()
        out.update(examiner_seconds_per_1000=hybrid["seconds_per_1000"], genrm_call_rate=hybrid["genrm_call_rate"])
    return out


def plot_calibration(metrics: dict, path: str | Path | None = None, ax=None):
    """Reliability diagram of the held-out step scores."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4))
    cal = metrics.get("calibration", {})
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect")
    ax.plot(cal.get("prob_pred", []), cal.get("prob_true", []), marker="o", label="GenRM")
    ax.set(xlabel="P(correct) (bin mean)", ylabel="fraction of steps correct", xlim=(0, 1), ylim=(0, 1),
           title=f"GenRM calibration (ECE {metrics.get('ece', float('nan')):.3f})")
    ax.legend(loc="upper left")
    if path:
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=120)
    return ax


def save_genrm_results(profile: Profile, metrics: dict, exam: dict, run: Path, policy_source: str,
                       sample: str | None = None) -> dict:
    """Merge ``genrm`` into ``results_dir/metrics.json``; write ``genrm_report.json``, the calibration plot and
    ``sample`` (:func:`undecided_sample`) as ``genrm_undecided_sample.md``."""
    import matplotlib.pyplot as plt

    info = json.loads((Path(run) / "run.json").read_text())
    entry = {k: metrics.get(k) for k in ("step_auroc", "step_accuracy", "step_f1", "step_macro_f1", "ece", "brier",
                                         "n_steps", "threshold", "steps_evaluated", "genrm_seconds_per_1000")}
    entry["step_f1_incorrect"] = metrics.get("step_f1")
    entry.update(verifier_coverage=exam["verifier_coverage"], agreement=exam["agreement"],
                 examiner_seconds_per_1000=exam.get("examiner_seconds_per_1000"),
                 verifier_seconds_per_1000=exam["verifier_seconds_per_1000"], split="validation",
                 profile=profile.name, model=profile.model_name if not profile.is_tiny else "tiny-llama (random)",
                 policy_source=policy_source, train_rows=info["train_rows"], train_seconds=info["seconds"],
                 machine=machine())
    save_metrics(profile.results_dir, "genrm", entry)
    results = Path(profile.results_dir)
    (results / "genrm_report.json").write_text(json.dumps({"metrics": metrics, "examiner": exam, "run": info},
                                                          indent=2, default=str))
    if sample is not None:
        (results / "genrm_undecided_sample.md").write_text(sample)
    (results / "figures").mkdir(parents=True, exist_ok=True)
    ax = plot_calibration(metrics, results / "figures" / "03_genrm_calibration.png")
    plt.close(ax.figure)
    return entry
