"""Evaluation harness: score every method on an evaluation set into ``results/metrics.json``; also a command-line tool.

The methods: the zero-shot base model, the lexical baseline and every saved run, each LLM by the read-outs of
she_lib.predictions (``generate``, ``first_token``; cached, so an interrupted evaluation resumes where it stopped),
scored into the results table of she_lib.results; CumPT on top of the first-token read-outs (she_lib.cumpt).

Command line (users bring their own labelled data in the ESCI layout)::

    python -m she_lib.evaluate --baseline zero_shot --profile cpu                 # test split
    python -m she_lib.evaluate --run runs/cpu/lexical --data path/to/esci_folder   # any ESCI folder
    python -m she_lib.evaluate --run runs/cpu/sft --data ../shared/data/esci_us_wide --save  # -> results/.../esci_us_wide/
    python -m she_lib.evaluate --run runs/cpu/sft --data data_samples/esci_us_wide --split test  # its test queries
    python -m she_lib.evaluate --report --profile cpu-full   # CumPT rows, summary.md, significance.md, figures

``--report`` re-runs no method: it reads the saved predictions (CumPT's validation read-outs are computed once
and cached) and regenerates every table and figure of notebook 05 (:func:`report`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

from .config import Profile, get_profile
from .cumpt import evaluate_cumpt, plot_cumpt
from .data import folder_pairs, folder_splits, load_splits, with_evidence
from .grade_probe import PROBE_FILE, GradeProbeConfig, evaluate_probe, train_probe
from .labels import get_scale
from .lexical import LexicalBaseline, LexicalConfig
from .metrics import UNPARSED, default_pairs, significance_table
from .predictions import (MODES, archive_predictions, archived_predictions, as_trained, method_name, per_query,
                          predict_llm, prediction_cache, prediction_seconds, read_predictions)
from .prior_correction import evaluate_prior_corrected
from .results import load_metrics, save_metrics, score, write_summary


# -------------------------------------------------------------------------------- evaluation sets
def eval_frame(profile: Profile, splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    df = splits[profile.eval_split]
    return df.iloc[: profile.eval_limit] if profile.eval_limit else df


def external_set(profile: Profile, folder: str | Path, split: str | None = None) -> tuple[Profile, pd.DataFrame]:
    """An ESCI folder as an evaluation set: its curated pairs (no pair caps; the evidence column where the profile
    shows it), all of them or, with ``split``, that split of data.folder_splits (the pipeline scores the test split
    of its extra folders, whose train split a profile may train on), and the profile that scores them: split
    ``external_<name>`` (read-outs cached in the run folder by example_id, shared by the whole folder and its test
    split), runs under ``runs_dir/external_<name>``, results in ``results_dir/<name>/`` or ``<name>_<split>/``
    (never the profile's own table)."""
    name = Path(os.path.abspath(folder)).name
    df = folder_splits(profile, folder)[split] if split else folder_pairs(profile, folder)
    return profile.replace(eval_split=f"external_{name}", runs_dir=str(Path(profile.runs_dir) / f"external_{name}"),
                           results_dir=str(Path(profile.results_dir) / (f"{name}_{split}" if split else name))), (
        with_evidence(df) if profile.prompt_evidence else df)


# ---------------------------------------------------------------------------------------- methods
def prior_rows(profile: Profile, run: Path, test: pd.DataFrame, validation: pd.DataFrame, extra=(),
               config=None, save: bool = True, summaries: bool = True) -> dict:
    """The prior-corrected read-out of ``run`` (she_lib.prior_correction) on ``test`` and every ``(profile, frame)``
    of ``extra`` whose first-token read-out is cached; with ``save`` its rows ``<run>_prior`` go to each set's
    metrics.json (and, with ``summaries``, its summary.md). Returns evaluate_prior_corrected's result."""
    out = evaluate_prior_corrected(profile, run, test, validation, tuple(extra), config)
    for prof, _ in ((profile, test), *extra):
        m = out["metrics"].get(prof.eval_split)
        if save and m is not None:
            save_metrics(prof.results_dir, f"{Path(run).name}_prior", m)
            if summaries:
                write_summary(prof.results_dir, get_scale(prof.grade_scale).words)
    return out



def probe_rows(profile: Profile, run: Path, splits: dict[str, pd.DataFrame], test: pd.DataFrame, extra=(),
               config=None, save: bool = True) -> dict:
    """The grade-probe read-out of ``run`` (she_lib.grade_probe): fitted on ``splits``' train and validation pairs
    (states cached in the run, the probe saved there), scored on ``test`` and every ``(profile, frame)`` of
    ``extra``; with ``save`` its rows ``<run>_probe`` go to each set's metrics.json and summary.md. Returns
    {split: metrics entry}."""
    probe = train_probe(run, profile, splits["train"], splits["validation"], config)
    out = evaluate_probe(profile, run, test, tuple(extra), probe, config)
    for prof, _ in ((profile, test), *extra):
        if save:
            save_metrics(prof.results_dir, f"{Path(run).name}_probe", out[prof.eval_split])
            write_summary(prof.results_dir, get_scale(prof.grade_scale).words)
    return out


def tune_rows(profile: Profile, run: Path, splits: dict[str, pd.DataFrame], test: pd.DataFrame, extra=(),
              config=None, save: bool = True) -> dict:
    """The grade-tuned read-out of ``run`` (she_lib.grade_tune): its top layers and a grade head trained on
    ``splits``' train pairs, the epoch and biases chosen on validation, scored on ``test`` and every
    ``(profile, frame)`` of ``extra``; with ``save`` its rows ``<run>_tune`` go to each set's metrics.json and
    summary.md. Returns {split: metrics entry}."""
    from .grade_tune import evaluate_grade_tune, train_grade_tune
    from .modeling import load_run

    info = json.loads((Path(run) / "run.json").read_text())
    policy = load_run(run, profile.replace(order=info.get("order", profile.order)))
    tuned = train_grade_tune(run, profile, splits["train"], splits["validation"], config, policy=policy)
    out = evaluate_grade_tune(profile, run, test, tuple(extra), tuned=tuned, policy=policy)
    for prof, _ in ((profile, test), *extra):
        if save:
            save_metrics(prof.results_dir, f"{Path(run).name}_tune", out[prof.eval_split])
            write_summary(prof.results_dir, get_scale(prof.grade_scale).words)
    return out


def evaluate_zero_shot(profile: Profile, df: pd.DataFrame, modes=MODES, progress: bool = True,
                       save: bool = True) -> dict[str, dict]:
    """The base model with the prompt, no training: one metrics entry per read-out mode."""
    from .modeling import load_policy

    policy = load_policy(profile)
    profile = profile.replace(eval_max_new_tokens=profile.zero_shot_max_new_tokens)
    results = {}
    for mode in modes:
        name, cache = method_name("zero_shot", mode), prediction_cache(Path(profile.runs_dir) / "zero_shot", profile, mode)
        preds = predict_llm(policy.model, policy.tokenizer, df, profile, mode, cache, progress)
        results[name] = score(df, preds, profile, split=profile.eval_split, model=profile.model_name
                              if not profile.is_tiny else "tiny-llama (random)", scoring=mode,
                              seconds=prediction_seconds(preds), dtype=str(policy.dtype).replace("torch.", ""),
                              max_new_tokens=profile.eval_max_new_tokens if mode == "generate" else 0)
        if save:
            save_metrics(profile.results_dir, name, results[name])
    return results


def evaluate_lexical(profile: Profile, splits: dict[str, pd.DataFrame], save: bool = True,
                     name: str = "lexical") -> dict:
    """Fit the lexical baseline on train, save it under runs/<name>, score it on the eval split (row ``name``)."""
    t0 = time.time()
    model = LexicalBaseline(LexicalConfig(seed=profile.seed)).fit(splits["train"])
    fit_s = time.time() - t0
    run = Path(profile.runs_dir) / name
    run.mkdir(parents=True, exist_ok=True)
    model.save(run / "lexical.joblib")
    (run / "run.json").write_text(json.dumps({"kind": "lexical", "profile": profile.name}))
    df = eval_frame(profile, splits)
    t0 = time.time()
    preds = pd.DataFrame({"example_id": df["example_id"], "pred": model.predict(df)})
    preds.to_json(run / f"predictions_{profile.eval_split}.jsonl", orient="records", lines=True)
    m = score(df, preds, profile, split=profile.eval_split, model="lexical features + gradient boosting",
              scoring="classifier", seconds=round(time.time() - t0, 2), fit_seconds=round(fit_s, 2))
    if save:
        save_metrics(profile.results_dir, name, m)
    return m


def evaluate_run(run: Path, profile: Profile, df: pd.DataFrame, modes=MODES,
                 archive: str | Path | None = None) -> dict[str, dict]:
    """Score a saved run: a lexical model, or a peft adapter / full checkpoint of the profile's base; with
    ``archive`` (a results folder) each LLM read-out's predictions are archived there (predictions.archive_predictions).
    An LLM run is read in the reasoning order and with the prompt (evidence line or not) its ``run.json`` records;
    ``first_token`` reads the grade
    before any reasoning, so a ``steps_first`` run is read by decoding only."""
    run = Path(run)
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    if info.get("kind") == "lexical" or (run / "lexical.joblib").exists():
        model = LexicalBaseline.load(run / "lexical.joblib")
        preds = pd.DataFrame({"example_id": df["example_id"], "pred": model.predict(df)})
        return {run.name: score(df, preds, profile, split=profile.eval_split, model=str(run), scoring="classifier",
                                run=info)}
    profile, df = as_trained(info, profile, df)
    out = {}
    if "probe" in modes:  # the run's saved grade probe (she_lib.grade_probe) on the states of df's pairs
        if not (run / PROBE_FILE).exists():
            raise FileNotFoundError(f"{run}: no {PROBE_FILE} (fit one with evaluate.probe_rows or notebook 05)")
        out[f"{run.name}_probe"] = evaluate_probe(profile, run, df)[profile.eval_split]
        modes = [m for m in modes if m != "probe"]
        if not modes:
            return out
    modes = [m for m in modes if profile.order == "grade_first" or m != "first_token"] or ["generate"]
    from .modeling import load_run

    policy = load_run(run, profile)
    model = policy.model
    for mode in modes:
        frame = per_query(df, profile.eval_generate_per_query) if mode == "generate" else df
        preds = predict_llm(model, policy.tokenizer, frame, profile, mode, prediction_cache(run, profile, mode))
        if archive:
            archive_predictions(archive, method_name(run.name, mode), preds)
        out[method_name(run.name, mode)] = score(
            frame, preds, profile, split=profile.eval_split, model=str(run), scoring=mode, run=info,
            seconds=prediction_seconds(preds), pairs_per_query=profile.eval_generate_per_query if mode == "generate" else None)
    return out


POLICY_KINDS = ("sft", "dpo", "grpo", "srpo", "agrl")  # run kinds that answer the relevance prompt


def policy_runs(profile: Profile) -> list[Path]:
    """Finished policy runs of ``profile`` (a reward model such as ``genrm`` is not one), by name."""
    root = Path(profile.runs_dir)
    runs = [p.parent for p in root.glob("*/run.json") if (p.parent / "adapter_config.json").exists()]
    return sorted(r for r in runs if json.loads((r / "run.json").read_text()).get("kind") in POLICY_KINDS)


def evaluate_runs(profile: Profile, df: pd.DataFrame, modes=None, save: bool = True) -> dict[str, dict]:
    """Score every policy run of ``profile`` (see :func:`evaluate_run` for orders and read-outs)."""
    results = {}
    for run in policy_runs(profile):
        for name, m in evaluate_run(run, profile, df, modes or profile.eval_trained_modes,
                                    archive=profile.results_dir if save else None).items():
            results[name] = m
            if save:
                save_metrics(profile.results_dir, name, m)
    return results


def probe_runs(profile: Profile, splits: dict[str, pd.DataFrame], df: pd.DataFrame, kinds=("sft",), extra=(),
               save: bool = True) -> dict[str, dict]:
    """The grade probe (:func:`probe_rows`, the profile's probe budget) of every finished run of ``kinds`` that
    answers grade first (the probe reads the state at ``<grade>``): {run name: {split: metrics entry}}."""
    out = {}
    for run in policy_runs(profile):
        info = json.loads((run / "run.json").read_text())
        if info.get("kind") in kinds and info.get("order", profile.order) == "grade_first":
            out[run.name] = probe_rows(profile, run, splits, df, extra, GradeProbeConfig.for_profile(profile), save)
    return out


def report_run(run: Path, profile: Profile, modes, save: bool = False) -> dict[str, dict]:
    """Score ``run`` on the profile's evaluation split, print the headline figures, optionally save them
    (``metrics.json``, then ``summary.md`` and the confusion figure): what the training CLIs call."""
    results = evaluate_run(run, profile, eval_frame(profile, load_splits(profile)), modes,
                           archive=profile.results_dir if save else None)
    for method, m in results.items():
        print(method, {k: m[k] for k in ("accuracy", "macro_f1", "macro_f1_ci", "parse_failure_rate")})
        if save:
            save_metrics(profile.results_dir, method, m)
    if save:
        write_summary(profile.results_dir, get_scale(profile.grade_scale).words)
    return results


# ------------------------------------------------------------------------------ saved predictions
def prediction_files(profile: Profile, runs_dir: str | Path | None = None, archived: bool = False) -> dict[str, Path]:
    """method -> its existing prediction cache on the eval split: lexical, zero-shot and every policy run, each
    read-out (a run in its own reasoning order), and CumPT (``<base>_cumpt``), the prior-corrected read-out
    (``<base>_prior``) and the grade probe (``<base>_probe``) where they were written. ``runs_dir``: where the
    zero-shot and policy runs are (default the profile's; an external set's profile, evaluate.external_set, keeps
    only its lexical run in its own). ``archived``: also the read-outs archived in the profile's results folder
    (predictions.archived_predictions) whose run cache is not here, e.g. runs trained in another checkout."""
    zs = profile.replace(eval_max_new_tokens=profile.zero_shot_max_new_tokens)
    runs = Path(runs_dir or profile.runs_dir)
    files = {"lexical": Path(profile.runs_dir) / "lexical" / f"predictions_{profile.eval_split}.jsonl"}
    for folder in [runs / "zero_shot", *policy_runs(profile.replace(runs_dir=str(runs)))]:
        info = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
        prof = (zs if folder.name == "zero_shot" else profile).replace(order=info.get("order", profile.order))
        files.update({method_name(folder.name, m): prediction_cache(folder, prof, m) for m in MODES})
        files[f"{folder.name}_cumpt"] = prediction_cache(folder, prof, "cumpt")
        files[f"{folder.name}_prior"] = prediction_cache(folder, prof, "prior")
        files[f"{folder.name}_probe"] = prediction_cache(folder, prof, "probe")
        files[f"{folder.name}_tune"] = prediction_cache(folder, prof, "tune")
    files = {k: v for k, v in files.items() if v is not None and v.exists()}
    return {**archived_predictions(profile.results_dir), **files} if archived else files


def load_predictions(profile: Profile, df: pd.DataFrame, column: str = "pred",
                     runs_dir: str | Path | None = None, archived: bool = False) -> pd.DataFrame:
    """``df`` (example_id, query, label, ...) plus one column per method of :func:`prediction_files` (``runs_dir``
    and ``archived`` as there) holding its ``column`` (the grade: UNPARSED where the answer had none; NaN where the method has no
    prediction, e.g. a decoded read-out of k pairs per query)."""
    out = df.copy()
    for name, path in prediction_files(profile, runs_dir, archived).items():
        p = read_predictions(path)
        if column in p.columns:
            have = out["example_id"].isin(p.index)
            value = out["example_id"].map(p[column])
            out[name] = value.where(~have | value.notna(), UNPARSED) if column == "pred" else value
    return out


def report(profile: Profile, save: bool = True, extra=()) -> dict:
    """Notebook 05's tables and figures from saved predictions, nothing re-run: CumPT on every first-token
    read-out (she_lib.cumpt; rows ``<base>_cumpt`` merged into metrics.json, ``figures/05_cumpt.png``), the
    prior-corrected read-out (she_lib.prior_correction; rows ``<base>_prior``, here and in the results folder of
    every ``(profile, frame)`` of ``extra`` whose first-token read-out is cached; both tune on validation
    read-outs, computed once and cached),
    ``summary.md`` + ``figures/05_confusion.png`` (:func:`write_summary`) and ``significance.md`` (paired bootstrap
    over queries, :func:`default_pairs`). A first-token read-out that does not cover the split yet (still running)
    is left out of CumPT and the significance table, with a message."""
    import matplotlib.pyplot as plt

    words, results = get_scale(profile.grade_scale).words, Path(profile.results_dir)
    splits = load_splits(profile)
    test = eval_frame(profile, splits)
    saved = load_metrics(results)
    curves, priors, running = {}, {}, set()
    for method, path in prediction_files(profile).items():
        if method.endswith("_first_token"):
            if not test["example_id"].isin(read_predictions(path).index).all():  # a read-out still running
                print(f"CumPT: skipping {method}: {path} does not cover the {profile.eval_split} split yet")
                running.add(method)
                continue
            c = evaluate_cumpt(profile, path.parent, test, splits["validation"],
                               seconds=saved.get(method, {}).get("seconds"))
            curves[f"{path.parent.name}_cumpt"] = c
            priors[f"{path.parent.name}_prior"] = prior_rows(profile, path.parent, test, splits["validation"], extra,
                                                             save=save, summaries=False)
            if save:
                save_metrics(results, f"{path.parent.name}_cumpt", c["metrics"])
    for prof, _ in extra if save and priors else ():  # the extra folders' summaries, once, after every run's rows
        write_summary(prof.results_dir, words)
    if curves:
        (results / "figures").mkdir(parents=True, exist_ok=True)
        plt.close(plot_cumpt(curves, words, results / "figures" / "05_cumpt.png"))
    summary = write_summary(results, words) if (results / "metrics.json").exists() else None
    preds = load_predictions(profile, test)
    methods = [c for c in preds.columns if c not in test.columns and c not in running]
    sig = significance_table(preds, default_pairs(methods), words, profile.bootstrap_samples, profile.seed)
    (results / "significance.md").write_text(
        "Paired bootstrap over test queries (same resample for both methods), A - B; p two-sided "
        f"(she_lib.metrics.paired_bootstrap, {profile.bootstrap_samples} resamples).\n\n"
        + (sig.to_markdown(index=False) if len(sig) else "(no pairs)") + "\n")
    return {"cumpt": curves, "prior": priors, "summary": summary, "significance": sig, "predictions": preds}


# -------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m she_lib.evaluate", description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a saved run folder (runs/<profile>/<name>)")
    src.add_argument("--baseline", choices=["zero_shot", "lexical"])
    src.add_argument("--report", action="store_true", help="regenerate tables and figures from saved predictions")
    ap.add_argument("--data", help="a folder in the ESCI layout; default: the profile's split")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--split", default=None, help="train / validation / test (default: the profile's); with --data, "
                    "that query split of the folder (data.folder_splits: the pipeline's esci_us_wide test split is "
                    "--split test), default the whole folder")
    ap.add_argument("--mode", choices=[*MODES, "both", "probe"], default="both",
                    help="probe: the run's saved grade probe (grade_probe.joblib in the run folder)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--fp32-logits", action="store_true", help="first token: grade logits h . w in fp32 "
                    "(Profile.eval_fp32_logits); with --save into <results_dir>/fp32/ (with --data: into its "
                    "<folder>_<split>/), apart from the model-precision read-outs")
    ap.add_argument("--save", action="store_true", help="merge the result into the profile's metrics.json "
                    "(with --data: into <results_dir>/<data folder name>/metrics.json)")
    args = ap.parse_args(argv)
    if args.data and args.report:
        ap.error("--report reads the profile's split only; score --data with --run or --baseline")
    profile = get_profile(args.profile, **{k: v for k, v in {"eval_split": args.split,
                                                             "eval_limit": args.limit,
                                                             "eval_fp32_logits": args.fp32_logits}.items() if v})
    if args.report:
        out = report(profile)
        print(out["summary"].to_string() if out["summary"] is not None else "no metrics.json yet")
        print(out["significance"].to_string())
        return 0
    modes = MODES if args.mode == "both" else (args.mode,)
    if args.baseline and args.mode == "probe":
        ap.error("--mode probe reads a run's saved probe; use it with --run")
    splits = load_splits(profile)
    if profile.eval_fp32_logits:  # results/fp32/ (and results/fp32/<data>_<split>/), apart from the committed read-outs
        profile = profile.replace(results_dir=str(Path(profile.results_dir) / "fp32"))
    if args.data:  # an external folder (or one query split of it) is the evaluation set
        profile, df = external_set(profile, args.data, args.split)
        splits = {**splits, profile.eval_split: df}
    df = eval_frame(profile, splits)
    if args.baseline == "zero_shot":
        results = evaluate_zero_shot(profile, df, modes, save=args.save)
    elif args.baseline == "lexical":
        results = {"lexical": evaluate_lexical(profile, splits, save=args.save)}
    else:
        results = evaluate_run(Path(args.run), profile, df, modes, archive=profile.results_dir if args.save else None)
        for name, m in results.items() if args.save else ():
            save_metrics(profile.results_dir, name, m)
    if args.save:
        write_summary(profile.results_dir, get_scale(profile.grade_scale).words)
    cols = ["accuracy", "macro_f1", "macro_f1_ci", "parse_failure_rate", "n_examples", "n_queries"]
    print(pd.DataFrame(results).T[cols].to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
