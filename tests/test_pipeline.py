"""she_lib.pipeline: every stage of the one-process pipeline on smoke, both test sets, the budget and failures."""
import json
from pathlib import Path

from she_lib.config import REPO_ROOT, get_profile
from she_lib.pipeline import STAGES, Pipeline

WIDE = str(REPO_ROOT / "data_samples" / "esci_us_wide")


def smoke_profile(tmp_path):
    return get_profile("smoke", runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"),
                       processed_dir=str(tmp_path / "processed"), extra_eval_dirs=(WIDE,))


def test_pipeline_scores_every_run_on_both_test_sets(tmp_path):
    prof = smoke_profile(tmp_path)
    log = Pipeline(prof, stages=("data", "lexical", "sft", "zero_shot", "grpo", "report")).run()
    assert {k: v["status"] for k, v in log.items()} == dict.fromkeys(
        ("data", "lexical", "sft", "zero_shot", "grpo", "report"), "done")
    test = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert {"lexical", "sft", "sft_first_token", "zero_shot", "zero_shot_first_token", "grpo",
            "grpo_first_token", "sft_cumpt"} <= set(test)
    wide = json.loads((tmp_path / "results" / "esci_us_wide_test" / "metrics.json").read_text())
    assert {"lexical", "sft", "sft_first_token", "zero_shot_first_token", "grpo", "grpo_first_token"} <= set(wide)
    # the wide set's test split is scored (smoke caps it at eval_limit pairs), in its own split name; decoded
    # read-outs there take one pair of each of its queries
    assert {m["n_examples"] for k, m in wide.items() if k in ("lexical", "sft_first_token")} == {prof.eval_limit}
    assert wide["sft"]["n_examples"] == wide["sft"]["n_queries"] == wide["sft_first_token"]["n_queries"]
    assert {m["split"] for m in wide.values()} == {"external_esci_us_wide"}
    assert (tmp_path / "results" / "esci_us_wide_test" / "summary.md").exists()
    info = json.loads((tmp_path / "results" / "pipeline.json").read_text())
    assert info["profile"] == "smoke" and set(info["made_by"]) >= {"command", "commit", "machine"}


def test_pipeline_budget_and_failures_are_recorded(tmp_path):
    prof = smoke_profile(tmp_path).replace(extra_eval_dirs=())
    log = Pipeline(prof, budget_s=0, stages=("data", "lexical", "sft", "report")).run()
    assert {s: log[s] for s in ("lexical", "sft")} == {
        s: {"status": "skipped", "why": "budget of 0 s spent"} for s in ("lexical", "sft")}
    assert log["data"]["status"] == log["report"]["status"] == "done"  # these two only read and write files
    log = Pipeline(prof, stages=("data", "grpo")).run()  # RL without an SFT run: recorded, not raised
    assert log["data"]["status"] == "done" and log["grpo"]["status"] == "failed"
    assert log["grpo"]["error"] == "RuntimeError: no SFT run to start from"
    assert STAGES[0] == "data" and STAGES[-1] == "speed"


def test_gpu_offline_profile_resolves_for_every_stage():
    from she_lib.dpo import DPOBaselineConfig
    from she_lib.genrm import GenRMConfig
    from she_lib.rl import curriculum_for, rl_config
    from she_lib.sft import CoTSFTConfig

    prof = get_profile("gpu-offline")
    assert prof.model_source == "smollm2_gguf" and prof.dtype == "bfloat16" and prof.extra_eval_dirs == prof.extra_train_dirs == (WIDE,)
    assert Path(prof.results_dir) == REPO_ROOT / "results" / "gpu"
    sft = CoTSFTConfig.for_profile(prof)
    assert sft.train_limit is None and sft.epochs == 1 and sft.class_balance == 0.5 and sft.select_by_grade_f1
    assert DPOBaselineConfig.for_profile(prof).sample_limit == 256 and GenRMConfig.for_profile(prof).policy_prompts == 128
    assert curriculum_for(prof).stage_steps == (4, 4, 4)
    args = rl_config(prof, "srpo")
    assert args.num_generations == 8 and args.beta == 0.02 and args.use_vllm is False


def test_gpu_site_carries_the_pinned_versions():
    """The packages scripts/gpu_run.sh carries to the GPU (../shared/gpu/build_gpu_site.sh) match the pins."""
    site = (REPO_ROOT.parent / "shared" / "gpu" / "build_gpu_site.sh").read_text()
    req = (REPO_ROOT / "requirements-gpu.txt").read_text()
    assert "trl==1.15.0" in site and "trl==1.15.0" in req
    assert "datasets==4.8.5" in site and "datasets>=4,<5" in req
    assert "gguf" in site and "python -m she_lib.pipeline" in (REPO_ROOT / "scripts" / "gpu_run.sh").read_text()
