"""RL results: training curves of GRPO / SRPO / AGRL runs and the method x seed comparison table.

Runs are named ``<method>`` for seed 0 and ``<method>_s<seed>`` otherwise, with ``_bal`` after the method for the
class-balanced prompt order (:func:`run_name`; a table row of its own; keys are read by
she_lib.metrics.parse_method); their metrics in
``metrics.json`` are ``<run>`` (decoded) and ``<run>_first_token``. The table gives, per method and read-out, the
mean and the standard deviation over seeds of accuracy and macro-F1, seed 0's query-bootstrap CI, step accuracy and
rule-violation rate of decoded rationales (she_lib.verifier, she_lib.rules), collapse (``grade TV``: the mean over
seeds of the total variation between predicted and true grade distributions, she_lib.metrics.grade_tv;
``min class F1``: the lowest per-grade F1 of any seed), skill (means over seeds of Cohen's ``kappa`` and of
``macro-F1 - chance``, the macro-F1 above an input-blind predictor with the run's own predicted-grade shares,
she_lib.metrics.chance_agreement), and training stability: the standard deviation over seeds of the mean reward of
the last ``tail`` logged steps. :func:`grade_skill` adds each first-token read-out's per-grade AUROC.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .config import REPO_ROOT, get_profile
from .data import load_splits
from .evaluate import eval_frame, external_set, load_predictions, prediction_files
from .labels import get_scale
from .metrics import (ON_GRPO, chance_agreement, classification_metrics, grade_auroc, grade_tv, method_key,
                      paired_ratio_bootstrap, parse_method, significance_table)
from .predictions import read_predictions
from .results import load_metrics
from .rules import rule_checks
from .verifier import judged_steps, verify

CURVES = (("reward", "outcome / rule reward"), ("entropy", "policy entropy (nats)"),
          ("srpo/step_reward", "mean step reward"), ("completions/mean_length", "completion tokens"))


def run_name(method: str, seed: int, stage_order: str = "random", scale_rewards: str | None = None,
             start: str = "sft") -> str:
    """``<method>[_gradehead][_bal][_<scale>][_s<seed>]``: the run folder of an RL method, its start when not the SFT
    model (``grade_head``: she_lib.probe_head at the grade position), its prompt order, its reward scaling when not
    TRL's default ``group``, and seed (seed 0 unsuffixed)."""
    if start not in ("sft", "grade_head"):
        raise ValueError(f"start must be 'sft' or 'grade_head', got {start!r}")
    variant = ("_gradehead" if start == "grade_head" else "") + ("_bal" if stage_order == "balanced" else "") + (
        f"_{scale_rewards}" if scale_rewards not in (None, "group") else "")
    return method_key(method, variant, seed)


def training_log(run: str | Path) -> pd.DataFrame:
    """One row per logged optimizer step of a run's ``train_log.json``."""
    log = json.loads((Path(run) / "train_log.json").read_text())
    return pd.DataFrame([e for e in log if "loss" in e and "step" in e])


def plot_training(runs: dict[str, str | Path], path: str | Path | None = None):
    """Reward, entropy, step reward and completion length against the step, one line per run; curriculum stage
    changes of the first run are dotted vertical lines. Entropy collapse shows as the entropy panel falling."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.2))
    logs = {name: training_log(run) for name, run in runs.items()}
    for ax, (col, title) in zip(axes, CURVES):
        for i, (name, log) in enumerate(logs.items()):  # one colour per run in every panel (GRPO logs no step reward)
            if col in log:
                ax.plot(log["step"], log[col], marker=".", label=name, color=f"C{i % 10}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    first = next(iter(logs.values()), pd.DataFrame())
    if "stage" in first:
        for step in first.loc[first["stage"].diff().fillna(0) != 0, "step"]:
            for ax in axes:
                ax.axvline(step - 0.5, ls=":", c="grey")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig


def reward_tail(run: str | Path, tail: int = 5) -> float:
    """The mean reward of a run's last ``tail`` logged steps (NaN without any)."""
    log = training_log(run)
    return float(log["reward"].tail(tail).mean()) if "reward" in log and len(log) else float("nan")


def final_reward(run: Path, entry: dict, tail: int = 5) -> float | None:
    """:func:`reward_tail` of the run folder where it is here, else the ``final_reward`` its run.json recorded at the
    end of training (kept in the metrics ``entry``; None for runs older than that field)."""
    if (run / "train_log.json").exists():
        return reward_tail(run, tail)
    return (entry.get("run") or {}).get("final_reward")


def rl_table(metrics: dict, runs_dir: str | Path, methods=("sft", "dpo", "grpo", "srpo", "agrl"),
             tail: int = 5) -> pd.DataFrame:
    """Methods x read-outs from ``metrics.json`` entries (see module doc)."""
    groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for key in metrics:
        m = parse_method(key)
        if m and m["family"] in methods and m["readout"] != "_cumpt":  # CumPT rows are notebook 05's
            groups.setdefault((m["family"], m["variant"], "first token" if m["readout"] else "decoded"),
                              []).append((m["seed"], key))
    rows = []
    for (base, variant, read), entries in sorted(groups.items(),
                                                 key=lambda kv: (methods.index(kv[0][0]), kv[0][1], kv[0][2])):
        method = base + variant
        entries.sort()
        ms = [metrics[k] for _, k in entries]
        acc, f1 = np.array([m["accuracy"] for m in ms]), np.array([m["macro_f1"] for m in ms])
        first = ms[0]
        rewards = [final_reward(Path(runs_dir) / key.replace("_first_token", ""), metrics[key], tail)
                   for _, key in entries]
        rewards = [r for r in rewards if r is not None and not np.isnan(r)]
        ci = first.get("macro_f1_ci")
        confusions = all("confusion_matrix" in m for m in ms)
        agree = [chance_agreement(m["confusion_matrix"]) for m in ms] if confusions else []
        rows.append({
            "method": method, "read-out": read, "seeds": len(ms), "pairs": first.get("n_examples"),
            "accuracy": f"{acc.mean():.3f}" + (f" ± {acc.std(ddof=1):.3f}" if len(ms) > 1 else ""),
            "macro-F1": f"{f1.mean():.3f}" + (f" ± {f1.std(ddof=1):.3f}" if len(ms) > 1 else ""),
            "macro-F1 CI (seed 0)": f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "",
            "grade TV": _fmt(np.mean([grade_tv(m["confusion_matrix"]) for m in ms]) if confusions else None),
            "kappa": _fmt(np.mean([a["kappa"] for a in agree]) if agree else None),
            "macro-F1 - chance": _fmt(np.mean(f1 - [a["chance_macro_f1"] for a in agree]) if agree else None),
            "min class F1": _fmt(min(min(m["per_class_f1"].values()) for m in ms)
                                 if all("per_class_f1" in m for m in ms) else None),
            "step accuracy": _fmt(np.mean([m["step_accuracy"] for m in ms if m.get("step_accuracy") is not None])
                                  if any(m.get("step_accuracy") is not None for m in ms) else None),
            "rule violations": _fmt(np.mean([m["rule_violation_rate"] for m in ms
                                             if m.get("rule_violation_rate") is not None])
                                    if any(m.get("rule_violation_rate") is not None for m in ms) else None),
            "final reward (seed std)": (f"{np.mean(rewards):.3f}" + (f" ({np.std(rewards, ddof=1):.3f})"
                                                                     if len(rewards) > 1 else ""))
            if rewards else "",
        })
    return pd.DataFrame(rows)


def _fmt(x) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def grade_shift(profile, runs=("sft", "dpo")) -> pd.DataFrame:
    """Where each run's first-token read-out puts its mass: per run, the mean over pairs of P(grade) at the answer
    position and the share of pairs whose argmax is each grade, from the cached read-outs
    (she_lib.evaluate.prediction_files). ``runs`` are always listed first, then every finished RL run. A collapse
    onto one grade shows as its share going to 1."""
    words, files = get_scale(profile.grade_scale).words, prediction_files(profile, archived=True)
    names = list(runs) + [n for n in rl_runs_read(files) if n not in runs]
    rows = {}
    for name in names:
        if f"{name}_first_token" in files:
            p = read_predictions(files[f"{name}_first_token"])
            rows[name] = {"pairs": len(p), **{f"mean P({w})": p[f"p_{w}"].mean() for w in words},
                          **{f"argmax {w}": (p["pred"] == w).mean() for w in words}}
    table = pd.DataFrame(rows).T
    return table.astype({"pairs": int}) if len(table) else table


def grade_skill(profile, test: pd.DataFrame, runs_dir: str | Path | None = None) -> pd.DataFrame:
    """Does a first-token read-out tell the pairs apart, or only set the grades' shares? Per read-out of ``test``
    whose probabilities are here (the SFT model and every RL run; their run caches or the archive), on the pairs it
    read: macro-F1, the chance macro-F1 and Cohen's kappa of she_lib.metrics.chance_agreement, and the one-vs-rest
    AUROC of each grade's probability (she_lib.metrics.grade_auroc) with their mean over grades. A read-out with no
    skill has kappa ~ 0, macro-F1 ~ chance and AUROCs ~ 0.5, whatever its macro-F1."""
    words, files = get_scale(profile.grade_scale).words, prediction_files(profile, runs_dir, archived=True)
    labels = test.set_index("example_id")["label"]
    starts = sorted((k[: -len("_first_token")] for k in files if (m := parse_method(k))
                     and m["family"] == "sft" and m["readout"] == "_first_token"), key=lambda n: (n != "sft", n))
    rows = {}
    for name in [*starts, *rl_runs_read(files)]:
        if f"{name}_first_token" not in files:
            continue
        p = read_predictions(files[f"{name}_first_token"])
        p = p[p.index.isin(labels.index) & p[[f"p_{w}" for w in words]].notna().all(1)] \
            if all(f"p_{w}" in p for w in words) else p.iloc[:0]
        if not len(p):
            continue
        y = labels.loc[p.index]
        m = classification_metrics(y, p["pred"], words)
        auroc = grade_auroc(y, p, words)
        rows[name] = {"pairs": len(p), "macro-F1": m["macro_f1"], **chance_agreement(m["confusion_matrix"]),
                      **{f"AUROC {w}": a for w, a in auroc.items()}, "mean AUROC": np.nanmean(list(auroc.values()))}
    table = pd.DataFrame(rows).T.rename(columns={"chance_macro_f1": "chance macro-F1"})
    return table.astype({"pairs": int}) if len(table) else table


def rl_significance(profile, test: pd.DataFrame, runs_dir: str | Path | None = None,
                    baselines=("_bal_recall_explore", "_bal")) -> pd.DataFrame:
    """Paired bootstrap over test queries (she_lib.metrics.significance_table) of the read-outs of ``test``: every RL
    run read here against the SFT run it started from (:func:`sft_start`), and every SRPO / AGRL run against
    :func:`grpo_partner`. A pair is compared on its first-token read-outs, or on its decoded ones where one of the two
    has no first-token read-out (a steps-first run, whose first token is a step tag), on the rows both decoded.
    ``runs_dir`` holds the runs when ``profile`` is an external set's (she_lib.evaluate.external_set). Read-outs
    archived in the results folder count as well as the runs' own caches (evaluate.prediction_files)."""
    runs_dir = runs_dir or profile.runs_dir
    preds = load_predictions(profile, test, runs_dir=runs_dir, archived=True)
    cols = {c for c in preds.columns if c not in test.columns and preds[c].notna().any()}
    first = {c[: -len("_first_token")] for c in cols if c.endswith("_first_token")}
    decoded = cols - {f"{n}_first_token" for n in first}
    pairs = []
    for a, b in rl_pairs(rl_runs_read(first | decoded), first | decoded, load_metrics(profile.results_dir), baselines):
        if a in first and b in first:
            pairs.append((f"{a}_first_token", f"{b}_first_token"))
        elif a in decoded and b in decoded:
            pairs.append((a, b))
    return significance_table(preds, pairs, get_scale(profile.grade_scale).words, profile.bootstrap_samples,
                              profile.seed)


def rl_pairs(runs, have, metrics: dict, baselines=("_bal_recall_explore", "_bal")) -> list[tuple[str, str]]:
    """(A, B) to test: every RL run of ``runs`` against the SFT run it started from (:func:`sft_start`), then every
    SRPO / AGRL run against a GRPO run from the same start: :func:`grpo_partner` among those, else the one GRPO
    variant from that start with the same seed, then every run against its :func:`ablation_partner`; only pairs
    whose both read-outs are in ``have``."""
    start = {h: sft_start(h, metrics) for h in {*runs, *have}}
    pairs = [(n, start[n]) for n in runs if start[n] in have]
    for n in runs:
        if (m := parse_method(n))["family"] not in ON_GRPO:
            continue
        same = {h for h in have if start[h] == start[n]}
        grpos = [h for h in sorted(same) if (g := parse_method(h)) and g["family"] == "grpo"
                 and g["seed"] == m["seed"] and not g["readout"]]
        partner = grpo_partner(n, same, baselines) or (grpos[0] if len(grpos) == 1 else None)
        if partner:
            pairs.append((n, partner))
    pairs += [(n, p) for n in runs if (p := ablation_partner(n)) in have and (n, p) not in pairs]
    return pairs


def ablation_partner(run: str) -> str | None:
    """The run ``run`` differs from by the last part of its variant, same family and seed: e.g.
    ``srpo_gradehead_recall_online_explore_genrm_s1`` (the hybrid examiner) -> ``srpo_gradehead_recall_online_explore_s1``
    (the verifier alone), ``..._steps54_kl004`` -> ``..._steps54``; None for a variant of one part."""
    m = parse_method(run)
    cut = m["variant"].rfind("_") if m else 0
    return method_key(m["family"], m["variant"][:cut], m["seed"]) if cut > 0 else None


def step_outcomes(frame: pd.DataFrame, column: str, scale) -> pd.DataFrame:
    """Per pair of ``frame`` (the test rows with a rationale in ``column``): ``right`` and ``judged`` steps
    (she_lib.verifier.judged_steps), ``parsable`` and ``broken`` (a parsable rationale that breaks a rule of
    she_lib.rules)."""
    rows = []
    for ex in frame.to_dict("records"):
        steps, checks = judged_steps(verify(ex, ex[column], scale)), rule_checks(ex, ex[column], scale)
        rows.append({"query": ex["query"].lower(), "right": sum(steps.values()), "judged": len(steps),
                     "parsable": int(checks.parsable), "broken": int(checks.parsable and bool(checks.broken()))})
    return pd.DataFrame(rows, index=frame.index)


def step_significance(profile, test: pd.DataFrame, runs_dir: str | Path | None = None) -> pd.DataFrame:
    """Paired bootstrap over test queries (she_lib.metrics.paired_ratio_bootstrap) of the decoded read-outs of
    ``test``, on the pairs both decoded: step accuracy (right / judged steps) and rule-violation rate (rationales
    breaking a rule / parsable ones), for the pairs of :func:`rl_pairs`. Needs the rationales: the runs' caches, or
    archives written since they keep the completions."""
    scale = get_scale(profile.grade_scale)
    preds = load_predictions(profile, test, "completion", runs_dir=runs_dir or profile.runs_dir, archived=True)
    have = {c for c in preds.columns if c not in test.columns and preds[c].notna().any()}
    metrics = load_metrics(profile.results_dir)
    outcomes, rows = {}, []
    for a, b in rl_pairs(rl_runs_read(have), have, metrics):
        both = preds[preds[a].notna() & preds[b].notna()]
        if not len(both):
            continue
        for n in (a, b):
            if n not in outcomes:
                outcomes[n] = step_outcomes(preds[preds[n].notna()], n, scale)
        qa, qb = (outcomes[n].loc[both.index].groupby("query").sum() for n in (a, b))
        row = {"A": a, "B": b, "pairs": len(both), "queries": len(qa)}
        for name, num, den in (("step accuracy", "right", "judged"), ("rule violations", "broken", "parsable")):
            if not (qa[den].sum() and qb[den].sum()):  # a rate over nothing (no rationale parses): no test
                row.update({f"{name} A-B": None, f"{name} 95% CI": None, f"{name} p": None})
                continue
            r = paired_ratio_bootstrap(qa[num], qa[den], qb[num], qb[den], profile.bootstrap_samples, profile.seed)
            row.update({f"{name} A-B": round(r["diff"], 3), f"{name} 95% CI": "[{:.3f}, {:.3f}]".format(*r["diff_ci"]),
                        f"{name} p": round(r["p"], 3)})
        rows.append(row)
    return pd.DataFrame(rows)


def sft_start(run: str, metrics: dict) -> str:
    """The SFT run an RL run started from: the last part of ``init_adapter`` in its read-out's metrics entry (the
    run.json it keeps), else ``sft``."""
    entry = metrics.get(f"{run}_first_token") or metrics.get(run) or {}
    init = (entry.get("run") or {}).get("init_adapter")
    return Path(init).name if init else "sft"


def grpo_partner(run: str, have, baselines=("_bal_recall_explore", "_bal")) -> str | None:
    """The GRPO run an SRPO / AGRL run is tested against, the first of ``have``: GRPO of the same variant and seed,
    else GRPO of each of ``baselines`` (variants: the best GRPO setting first) with the same seed, else their seed 0."""
    m = parse_method(run)
    candidates = [method_key("grpo", m["variant"], m["seed"]), *(method_key("grpo", v, m["seed"]) for v in baselines),
                  *(method_key("grpo", v) for v in baselines)]
    return next((c for c in candidates if c in have), None)


def rl_runs_read(methods, families=("grpo", "srpo", "agrl")) -> list[str]:
    """The RL runs among ``methods`` (metrics or prediction names; a ``_first_token`` suffix is dropped), by family,
    then variant and seed."""
    names = {m[: -len("_first_token")] if m.endswith("_first_token") else m for m in methods}
    parsed = [(n, parse_method(n)) for n in names]
    return [n for n, m in sorted(((n, m) for n, m in parsed if m and m["family"] in families and not m["readout"]),
                                 key=lambda nm: (families.index(nm[1]["family"]), nm[1]["variant"], nm[1]["seed"]))]


def finished_rl_runs(runs_dir: str | Path, methods=("grpo", "srpo", "agrl")) -> dict[str, Path]:
    """``{run name: folder}`` of the finished RL runs under ``runs_dir`` (``run.json`` with ``finished`` and a kind
    in ``methods``), by method, then seeds in order."""
    found = []
    for run in Path(runs_dir).glob("*/run.json"):
        info = json.loads(run.read_text())
        if info.get("finished") and info.get("kind") in methods and parse_method(run.parent.name):
            found.append((methods.index(info["kind"]), run.parent.name, run.parent))
    return {name: folder for _, name, folder in sorted(found)}


def write_report(profile, runs: dict[str, str | Path] | None = None) -> pd.DataFrame:
    """What notebook 04 writes, from runs already trained (nothing is run): ``figures/04_rl_training.png``,
    ``rl_table.md`` (:func:`rl_table` over ``metrics.json``), ``rl_skill.md``, ``rl_significance.md`` and
    ``rl_step_significance.md`` (:func:`_write_tests`), all also in the results folder of each extra test split
    (``esci_us_wide_test/``) where it was scored,
    ``rl_replay.json`` (AGRL's replay counts, from the runs here and the metrics entries of runs gone) and
    ``rl_grade_shift.md`` (:func:`grade_shift`)."""
    import matplotlib.pyplot as plt

    profile = get_profile(profile)
    results = Path(profile.results_dir)
    runs = finished_rl_runs(profile.runs_dir) if runs is None else runs
    if runs:
        (results / "figures").mkdir(parents=True, exist_ok=True)
        plt.close(plot_training(runs, results / "figures" / "04_rl_training.png"))
    saved = load_metrics(results)
    replay = {**recorded_replay(saved),  # runs no longer here, from their read-outs' entries; then the runs here
              **{n: json.loads((Path(r) / "run.json").read_text()).get("replay") for n, r in runs.items()}}
    (results / "rl_replay.json").write_text(json.dumps({n: r for n, r in sorted(replay.items()) if r}, indent=2))
    # each extra test split where it was scored: the profile's extra_eval_dirs, else esci_us_wide's (which
    # scripts/cpu_full_rl.sh scores with --data)
    for folder in profile.extra_eval_dirs or (str(REPO_ROOT / "data_samples" / "esci_us_wide"),):
        ext, frame = external_set(profile, folder, "test")
        if (Path(ext.results_dir) / "metrics.json").exists():
            _write_table(Path(ext.results_dir), profile.runs_dir)
            _write_tests(ext, frame, profile.runs_dir)
    table = _write_table(results, profile.runs_dir)
    test = eval_frame(profile, load_splits(profile))
    _write_tests(profile, test)
    shift = grade_shift(profile)
    if len(shift):
        (results / "rl_grade_shift.md").write_text(shift.round(3).to_markdown() + "\n")
    return table


def recorded_replay(metrics: dict) -> dict[str, dict]:
    """``{run: AGRL replay counts}`` from the run.json that each read-out's metrics entry keeps (``run.replay``)."""
    out = {}
    for key, entry in metrics.items():
        m = parse_method(key)
        if m and m["readout"] in ("", "_first_token") and (entry.get("run") or {}).get("replay"):
            out[method_key(m["family"], m["variant"], m["seed"])] = entry["run"]["replay"]
    return out


def _write_tests(profile, test: pd.DataFrame, runs_dir=None) -> None:
    """``rl_skill.md`` (:func:`grade_skill`), ``rl_significance.md`` (:func:`rl_significance`) and
    ``rl_step_significance.md`` (:func:`step_significance`) of ``test`` in the profile's results folder."""
    n = profile.bootstrap_samples
    for file, header, table, empty in (
            ("rl_skill.md", "First-token read-outs: macro-F1 against the chance macro-F1 of grades drawn blind to the "
             "pair with the read-out's own shares, Cohen's kappa, and each grade's one-vs-rest AUROC of its "
             "probability (she_lib.rl_report.grade_skill).", grade_skill(profile, test, runs_dir).round(3),
             "(no read-outs)"),
            ("rl_significance.md", "First-token read-outs (decoded ones, named without `_first_token`, where a run "
             "has no first-token read-out); paired bootstrap over test queries (same resample for both), A - B, p "
             f"two-sided ({n} resamples; she_lib.rl_report.rl_significance). Only runs whose predictions are here "
             "(their run folder, or archived in predictions/) are tested; earlier pairs are in this file's git "
             "history and docs/results.md.", rl_significance(profile, test, runs_dir), "(no pairs)"),
            ("rl_step_significance.md", "Decoded read-outs: step accuracy (right / judged steps, she_lib.verifier) "
             "and rule-violation rate (rationales breaking a rule / parsable ones, she_lib.rules), A - B on the pairs "
             f"both decoded; paired bootstrap over test queries ({n} resamples; "
             "she_lib.rl_report.step_significance).", step_significance(profile, test, runs_dir), "(no pairs)")):
        body = table.to_markdown(index=file == "rl_skill.md") if len(table) else empty
        (Path(profile.results_dir) / file).write_text(f"{header}\n\n{body}\n")


def _write_table(folder: Path, runs_dir) -> pd.DataFrame:
    """:func:`rl_table` over ``folder/metrics.json`` (empty without one), written to ``folder/rl_table.md``."""
    table = rl_table(load_metrics(folder), runs_dir)
    (folder / "rl_table.md").write_text(table.to_markdown(index=False) + "\n")
    return table


def main(argv=None) -> int:
    """``python -m she_lib.rl_report --profile cpu-full``: the RL figures and table from the finished runs."""
    ap = argparse.ArgumentParser(prog="python -m she_lib.rl_report", description=main.__doc__)
    ap.add_argument("--profile", default="cpu")
    args = ap.parse_args(argv)
    print(write_report(args.profile).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
