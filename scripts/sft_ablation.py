"""SFT objective ablation on the cpu-full budget: does weighting the grade token (and balancing grades) teach the
decision?  ``python scripts/sft_ablation.py [--variants plain weighted] [--threads 1]``

Each variant is the cpu-full SFT config (480 train pairs of esci_us, one epoch of batch 8 = 60 steps) with the overrides in
VARIANTS (and, for PROMPT_EVIDENCE, the facts in the prompt), trained into ``runs/ablation/<variant>`` (resumable),
read by first token on the esci_us test split and on the test split of data_samples/esci_us_wide (270 queries,
634 pairs; its train and validation splits join esci_us's: data.folder_splits), and read again with per-grade
biases tuned on 32 validation pairs a query (she_lib.prior_correction; rows ``<run>_prior``), and by the grade probe
(the grade head refit on the model's states of every train pair: she_lib.grade_probe; rows ``<run>_probe``), and with
``--tune`` by the model whose top layers and grade head were trained on the grade (she_lib.grade_tune; rows
``<run>_tune``). A finished variant is only re-read. Rows go to ``results/ablation/metrics.json`` (and
``esci_us_wide_test/``), each with its run identity; the table to ``results/ablation/summary.md``. Run variants side by side, one thread each, on a 2-core CPU:
``python scripts/sft_ablation.py --variants plain & python scripts/sft_ablation.py --variants weighted``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# the grade token 10x (~10% of the loss instead of ~1%), grades resampled to shares ~ sqrt(counts), and the
# checkpoint kept by validation grade macro-F1 (evaluations at steps 30 and 60, where checkpoints are saved)
WEIGHTED = dict(grade_weight=10.0, class_balance=0.5, grade_eval_limit=64, select_by_grade_f1=True, save_steps=30,
                eval_steps=30)
VARIANTS = {  # name -> CoTSFTConfig overrides; PROMPT_EVIDENCE names the variants whose prompt carries the facts
    "plain": {},  # TRL's loss over the rationale, grades as in the data
    "weighted": WEIGHTED,
    # the plain objective, with the lexical evidence (terms found / missing) in the prompt (Profile.prompt_evidence)
    "evidence": {},
    # both levers together (the 2x2 of objective x prompt), then the same on 3x the pairs (180 steps)
    "evidence_weighted": WEIGHTED,
    "evidence_weighted_1440": {**WEIGHTED, "train_limit": 1440},
    # the evidence variant again on the teacher whose steps state the evidence (specs met / unstated / contradicted,
    # the negation scope of she_lib.facts); the runs above were trained on the teacher that restated the label
    "evidence_steps": {},
    # the evidence prompt on every train pair of esci_us and of esci_us_wide's train split (4,443 pairs, one epoch of
    # batch 8 = 556 steps), validation grade macro-F1 logged on 128 pairs every 100 steps; the last model is kept, not
    # the best by that first-token F1: it stays at the prior (0.19, 0.18 at steps 100, 200) while the grade probe is the
    # read-out, so selecting by it would keep a model that has seen a fifth of the pairs
    "evidence_all": {"train_limit": None, "logging_steps": 10, "save_steps": 100, "eval_steps": 100,
                     "grade_eval_limit": 128},
}
# the untrained base model in the evidence prompt, read by the grade probe only: the probe's control (what SFT adds)
CONTROLS = {"zero_shot_evidence": {"kind": "base", "order": "grade_first", "prompt_evidence": True}}
PROMPT_EVIDENCE = {"evidence", "evidence_weighted", "evidence_weighted_1440", "evidence_steps", "evidence_all"}
WIDE = str(Path(__file__).resolve().parents[1] / "data_samples" / "esci_us_wide")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=[*VARIANTS, *CONTROLS])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--skip-probe", action="store_true",
                    help="no grade probe (a variant without cached states costs ~10 min of state reads on 2 cores)")
    ap.add_argument("--tune", action="store_true",
                    help="also the grade-tuned read-out (she_lib.grade_tune: the top layers and a grade head trained on "
                         "the grade over every train pair; rows <run>_tune)")
    ap.add_argument("--report", action="store_true",
                    help="only the paired bootstrap over test queries from the saved read-outs (significance.md)")
    a = ap.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from she_lib.config import REPO_ROOT, get_profile
    from she_lib.pipeline import Pipeline
    from she_lib.sft import CoTSFTConfig, train_sft

    prof = get_profile("cpu-full", runs_dir=str(REPO_ROOT / "runs" / "ablation"),
                       results_dir=str(REPO_ROOT / "results" / "ablation"), eval_trained_modes=("first_token",),
                       extra_eval_dirs=(WIDE,), extra_train_dirs=(WIDE,))
    if a.report:
        return report(prof)
    Pipeline(prof, stages=("data", "lexical")).run()
    lexical_main_only(prof)
    for name in a.variants:
        pipe = Pipeline(prof.replace(prompt_evidence=name in PROMPT_EVIDENCE or name in CONTROLS), stages=("data",))
        pipe.run()
        if name in CONTROLS:
            run = Path(prof.runs_dir) / name
            run.mkdir(parents=True, exist_ok=True)
            (run / "run.json").write_text(json.dumps(CONTROLS[name], indent=2))
            probe_rows(pipe, run)
            continue
        cfg = CoTSFTConfig.for_profile(pipe.profile, **VARIANTS[name])
        run = train_sft(pipe.profile, cfg, pipe.splits, name=f"sft_{name}")
        pipe.score(run)
        prior_rows(pipe, run)
        if not a.skip_probe:
            probe_rows(pipe, run)
        if a.tune:
            tune_rows(pipe, run)
    print(open(os.path.join(prof.results_dir, "summary.md")).read())
    return 0


def lexical_main_only(prof) -> None:
    """The lexical baseline fitted on esci_us's train split alone (rows ``lexical_esci_us``), beside the ``lexical``
    row fitted on the same pairs as every variant (esci_us and esci_us_wide train): the stronger of the two is the
    bar."""
    from she_lib.evaluate import evaluate_lexical
    from she_lib.pipeline import Pipeline

    pipe = Pipeline(prof.replace(extra_train_dirs=()), stages=("data",))
    pipe.run()
    evaluate_lexical(pipe.profile, pipe.splits, name="lexical_esci_us")
    pipe.score(Path(prof.runs_dir) / "lexical_esci_us", test=False)


def prior_rows(pipe, run) -> None:
    """The prior-corrected read-out of ``run`` (biases tuned on validation read-outs in the variant's own prompt)
    on the esci_us test split and on every extra folder: rows ``<run>_prior``."""
    from she_lib.evaluate import eval_frame, prior_rows as save_prior_rows
    from she_lib.prior_correction import PriorCorrectionConfig

    out = save_prior_rows(pipe.profile, run, eval_frame(pipe.profile, pipe.splits), pipe.splits["validation"],
                          pipe.extra_sets().values(), PriorCorrectionConfig(validation_pairs_per_query=32))
    print(run.name, "prior biases", out["biases"], "validation macro-F1", round(out["validation_macro_f1"], 3))


def probe_rows(pipe, run) -> None:
    """The grade-probe read-out of ``run`` (she_lib.grade_probe, default config: every train and validation pair
    of esci_us and of esci_us_wide's train and validation splits, the states in the variant's own prompt) on the esci_us test split and every extra folder: rows
    ``<run>_probe``."""
    from she_lib.evaluate import eval_frame, probe_rows as save_probe_rows

    out = save_probe_rows(pipe.profile, run, pipe.splits, eval_frame(pipe.profile, pipe.splits),
                          pipe.extra_sets().values())
    print(run.name, "probe", {k: round(m["macro_f1"], 3) for k, m in out.items()})


def tune_rows(pipe, run) -> None:
    """The grade-tuned read-out of ``run`` (she_lib.grade_tune, default config: every train pair of esci_us and of
    esci_us_wide's train split, the epoch and biases chosen on every validation pair) on the esci_us test split and
    every extra folder: rows ``<run>_tune``."""
    from she_lib.evaluate import eval_frame, tune_rows as save_tune_rows

    out = save_tune_rows(pipe.profile, run, pipe.splits, eval_frame(pipe.profile, pipe.splits),
                         pipe.extra_sets().values())
    print(run.name, "tune", {k: round(m["macro_f1"], 3) for k, m in out.items()})


def _predictions(prof, test_prof, df):
    """``df`` plus one prediction column per read-out of every ablation run on ``test_prof``'s split
    (evaluate.load_predictions over the runs of ``prof``) and the probe read-out of each control."""
    from she_lib.evaluate import load_predictions
    from she_lib.lexical import LexicalBaseline
    from she_lib.predictions import prediction_cache, read_predictions

    out = load_predictions(test_prof, df, runs_dir=prof.runs_dir)
    for name in ("lexical", "lexical_esci_us"):  # both lexical fits, read again from their saved models
        model = Path(prof.runs_dir) / name / "lexical.joblib"
        if model.exists():
            out[name] = LexicalBaseline.load(model).predict(df)
    for c in CONTROLS:  # not policy runs (no adapter): their probe read-out is added here
        cache = prediction_cache(Path(prof.runs_dir) / c, test_prof, "probe")
        if cache.exists():
            out[f"{c}_probe"] = out["example_id"].map(read_predictions(cache)["pred"])
    return out


def report(prof) -> int:
    """Paired bootstrap over the test queries of esci_us and of esci_us_wide's test split: each variant against plain
    (same read-out) and both lexical fits, each probe and grade-tuned read-out against the untrained model's probe
    (CONTROLS), each grade-tuned read-out against its run's probe; significance.md of each."""
    from she_lib.data import load_splits
    from she_lib.evaluate import eval_frame
    from she_lib.labels import get_scale
    from she_lib.metrics import significance_table
    from she_lib.pipeline import Pipeline

    pipe = Pipeline(prof.replace(prompt_evidence=False), stages=())
    sets = [(prof, eval_frame(prof, load_splits(prof))), *pipe.extra_sets().values()]
    for test_prof, df in sets:
        preds = _predictions(prof, test_prof, df)
        controls = [f"{c}_probe" for c in CONTROLS if f"{c}_probe" in preds]
        have = [(v, r) for v in VARIANTS for r in ("_first_token", "_prior", "_probe", "_tune") if f"sft_{v}{r}" in preds]
        pairs = [(f"sft_{v}{r}", f"sft_plain{r}") for v, r in have if v != "plain" and f"sft_plain{r}" in preds]
        pairs += [(m, lex) for lex in ("lexical", "lexical_esci_us") if lex in preds
                  for m in [f"sft_{v}{r}" for v, r in have] + controls]
        pairs += [(f"sft_{v}{r}", c) for c in controls for v, r in have if r in ("_probe", "_tune")]
        pairs += [(f"sft_{v}_tune", f"sft_{v}_probe") for v, r in have if r == "_tune" and f"sft_{v}_probe" in preds]
        table = significance_table(preds, pairs, get_scale(prof.grade_scale).words, prof.bootstrap_samples, prof.seed)
        Path(test_prof.results_dir).mkdir(parents=True, exist_ok=True)
        Path(test_prof.results_dir, "significance.md").write_text(
            f"Paired bootstrap over the test queries of {test_prof.eval_split}, A - B "
            "(`python scripts/sft_ablation.py --report`).\n\n" + table.to_markdown(index=False) + "\n")
        print(test_prof.eval_split, "\n", table.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
