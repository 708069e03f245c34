"""SFT objective ablation on the cpu-full budget: does weighting the grade token (and balancing grades) teach the
decision?  ``python scripts/sft_ablation.py [--variants plain weighted] [--threads 1]``

Each variant is the cpu-full SFT config (480 train pairs, one epoch of batch 8 = 60 steps) with the overrides in
VARIANTS, trained into ``runs/ablation/<variant>`` (resumable) and read by first token on the esci_us test split and
on all of data_samples/esci_us_wide. Rows go to ``results/ablation/metrics.json`` (and ``esci_us_wide/``), each with
its run identity; the table to ``results/ablation/summary.md``. Run variants side by side, one thread each, on a
2-core CPU: ``python scripts/sft_ablation.py --variants plain & python scripts/sft_ablation.py --variants weighted``.
"""
from __future__ import annotations

import argparse
import os

VARIANTS = {
    "plain": {},  # TRL's loss over the rationale, grades as in the data
    # the grade token 10x (~10% of the loss instead of ~1%), grades resampled to shares ~ sqrt(counts), and the
    # checkpoint kept by validation grade macro-F1 (evaluations at steps 30 and 60, where checkpoints are saved)
    "weighted": dict(grade_weight=10.0, class_balance=0.5, grade_eval_limit=64, select_by_grade_f1=True,
                     save_steps=30, eval_steps=30),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
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
    pipe = Pipeline(prof, stages=("data", "lexical"))
    pipe.run()
    for name in a.variants:
        cfg = CoTSFTConfig.for_profile(prof, **VARIANTS[name])
        run = train_sft(prof, cfg, pipe.splits, name=f"sft_{name}")
        pipe.score(run)
    print(open(os.path.join(prof.results_dir, "summary.md")).read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
