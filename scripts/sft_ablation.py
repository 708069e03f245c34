"""SFT objective ablation on the cpu-full budget: does weighting the grade token (and balancing grades) teach the
decision?  ``python scripts/sft_ablation.py [--variants plain weighted] [--threads 1]``

Each variant is the cpu-full SFT config (480 train pairs, one epoch of batch 8 = 60 steps) with the overrides in
VARIANTS (and, for PROMPT_EVIDENCE, the facts in the prompt), trained into ``runs/ablation/<variant>`` (resumable) and read by first token on the esci_us test split and
on all of data_samples/esci_us_wide. Rows go to ``results/ablation/metrics.json`` (and ``esci_us_wide/``), each with
its run identity; the table to ``results/ablation/summary.md``. Run variants side by side, one thread each, on a
2-core CPU: ``python scripts/sft_ablation.py --variants plain & python scripts/sft_ablation.py --variants weighted``.
"""
from __future__ import annotations

import argparse
import os

VARIANTS = {  # name -> CoTSFTConfig overrides; PROMPT_EVIDENCE names the variants whose prompt carries the facts
    "plain": {},  # TRL's loss over the rationale, grades as in the data
    # the grade token 10x (~10% of the loss instead of ~1%), grades resampled to shares ~ sqrt(counts), and the
    # checkpoint kept by validation grade macro-F1 (evaluations at steps 30 and 60, where checkpoints are saved)
    "weighted": dict(grade_weight=10.0, class_balance=0.5, grade_eval_limit=64, select_by_grade_f1=True,
                     save_steps=30, eval_steps=30),
    # the plain objective, with the lexical evidence (terms found / missing) in the prompt (Profile.prompt_evidence)
    "evidence": {},
}
PROMPT_EVIDENCE = {"evidence"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
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
                       extra_eval_dirs=(str(REPO_ROOT / "data_samples" / "esci_us_wide"),))
    if a.report:
        return report(prof)
    Pipeline(prof, stages=("data", "lexical")).run()
    for name in a.variants:
        pipe = Pipeline(prof.replace(prompt_evidence=name in PROMPT_EVIDENCE), stages=("data",))
        pipe.run()
        cfg = CoTSFTConfig.for_profile(pipe.profile, **VARIANTS[name])
        run = train_sft(pipe.profile, cfg, pipe.splits, name=f"sft_{name}")
        pipe.score(run)
    print(open(os.path.join(prof.results_dir, "summary.md")).read())
    return 0


def report(prof) -> int:
    """Paired bootstrap over the esci_us test queries: each variant against plain and against lexical."""
    from pathlib import Path

    from she_lib.data import load_splits
    from she_lib.evaluate import eval_frame, load_predictions
    from she_lib.labels import get_scale
    from she_lib.metrics import significance_table

    preds = load_predictions(prof, eval_frame(prof, load_splits(prof)))
    names = [f"sft_{v}_first_token" for v in VARIANTS if f"sft_{v}_first_token" in preds]
    pairs = [(n, "sft_plain_first_token") for n in names if n != "sft_plain_first_token"] + [(n, "lexical") for n in names]
    table = significance_table(preds, pairs, get_scale(prof.grade_scale).words, prof.bootstrap_samples, prof.seed)
    Path(prof.results_dir, "significance.md").write_text(
        "Paired bootstrap over esci_us test queries, A - B (`python scripts/sft_ablation.py --report`).\n\n"
        + table.to_markdown(index=False) + "\n")
    print(table.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
