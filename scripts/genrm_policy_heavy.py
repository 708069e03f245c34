"""GenRM lever for issue 19: more policy rows. ``python scripts/genrm_policy_heavy.py``

The cpu-full GenRM (``python -m she_lib.genrm --profile cpu-full``) trains on 280 teacher rationales, 4 x 140
corruptions and the verifier-labelled samples of 120 train prompts x 2; here 240 prompts x 2 policy samples (the
first 120 prompts are the same, their samples cached), 140 teacher rationales and 4 x 70 corruptions, so the policy's
own rationales, the distribution the examiner is called on, are about half the rows. The held-out set is the same
(same seed and counts). Writes ``results/genrm_policy_heavy/`` and ``runs/cpu-full/genrm_policy_heavy``.
"""
from she_lib.config import REPO_ROOT, get_profile
from she_lib.genrm import GenRMConfig, run_genrm

if __name__ == "__main__":
    prof = get_profile("cpu-full", results_dir=str(REPO_ROOT / "results" / "genrm_policy_heavy"))
    cfg = GenRMConfig.for_profile(prof, policy_prompts=240, teacher_pairs=140, corruptions_per_kind=70)
    print(run_genrm(prof, cfg, name="genrm_policy_heavy")["metrics"])
