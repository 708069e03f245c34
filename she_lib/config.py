"""Profiles: one config object for every notebook and script.

A profile fixes the model, the data and every budget of a run. Notebooks take one parameter,
``profile`` (papermill ``-p profile smoke``), and call :func:`get_profile`; everything else reads
fields of the returned :class:`Profile`. Overrides are keyword arguments, so an ablation is
``get_profile("cpu", eval_max_new_tokens=64)``, never an edited constant. A profile's whole budget, its Profile
fields and the config of every stage (SFT, DPO, GenRM, RL, the RL prompt set), is one entry of :data:`TABLE`;
each stage's ``for_profile`` reads its part (:func:`stage_budget`).

Profiles
--------
smoke     tiny Llama built from a config in code (real SmolLM2 tokenizer), 200 pairs of 20 queries; CI.
cpu       SmolLM2-135M-Instruct offline on 2 CPU cores, every stage at a demo budget (README's main job): 16
          pairs per query, a 40-step SFT; 23.5 min on a 2-core AVX512-BF16 CPU (docs/speed.md).
cpu-full  the same model on the full train split with the budgets of the results table (hours).
gpu-offline  SmolLM2-135M from the GGUF on one offline CUDA GPU (Unsloth where installed), bf16: every train pair,
          the RL methods and both test sets in ~8 minutes of an H200 (``python -m she_lib.pipeline``,
          ``scripts/gpu_run.sh``; results/gpu/).
gpu       a hub model by name through Unsloth (CUDA), bf16.
colab     like gpu, sized for a free Colab T4 (fp16, smaller batches).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_cache_dir() -> Path:
    """Where converted checkpoints live: ``$SHE_CACHE`` or ``~/.cache/she_lib``."""
    return Path(os.environ.get("SHE_CACHE", Path.home() / ".cache" / "she_lib"))


@dataclass(frozen=True)
class Profile:
    name: str
    # --- model -----------------------------------------------------------------------------------
    model_source: str = "smollm2_gguf"  # "tiny" | "smollm2_gguf" | "hub" (a name or local folder)
    model_name: str = "SmolLM2-135M-Instruct"
    dtype: str = "auto"  # "auto" | "bfloat16" | "float16" | "float32"; auto = bf16 where it is fast
    use_unsloth: bool = True  # only takes effect when CUDA and unsloth are both present
    max_seq_length: int = 512
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # tiny model (smoke only): a random Llama with the real tokenizer's vocabulary
    tiny_hidden: int = 64
    tiny_layers: int = 2
    tiny_heads: int = 4
    # --- data ------------------------------------------------------------------------------------
    data_format: str = "esci"  # "esci" | "wands"
    data_dir: str = str(REPO_ROOT / "data_samples" / "esci_us")
    locale: str = "us"
    grade_scale: str = "esci"  # key of she_lib.labels.SCALES
    max_pairs_per_query: int | None = None  # cap pairs per query (hash order of example_id)
    max_pairs: int | None = None  # then keep whole queries (hash order) until this many pairs
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train / validation / test
    split_seed: int = 13
    bad_rows: str = "raise"  # "raise" | "skip" (skips are counted in the curation report)
    max_title_chars: int = 160
    max_bullets_chars: int = 160
    max_description_chars: int = 160
    processed_dir: str = str(REPO_ROOT / "data_processed")
    # the lexical evidence in the prompt (data.with_evidence: query terms the product states / lacks, excluded terms
    # it mentions), the facts a lexical model decides from; not in the papers, an input to ablate
    prompt_evidence: bool = False
    # --- reasoning format ------------------------------------------------------------------------
    order: str = "grade_first"  # "grade_first" (respond-then-think) | "steps_first"
    sft_orders: tuple[str, ...] = ("grade_first", "steps_first")  # orders notebook 02 trains (and 05 scores)
    # --- RL (notebook 04; the budgets are the rl and curriculum entries of TABLE) ------------------
    rl_methods: tuple[str, ...] = ("grpo", "srpo", "agrl")
    rl_seeds: tuple[int, ...] = (0,)  # RL seeds (LoRA init, sampling); every seed shares one prompt set
    # --- evaluation ------------------------------------------------------------------------------
    eval_split: str = "test"
    # further ESCI folders (no query shared with data_dir) split by query at extra_split_fractions (data.folder_splits):
    # the test split of each extra_eval_dirs folder is scored by she_lib.pipeline into
    # results_dir/<folder name>_test/metrics.json (esci_us_wide: 270 queries, 634 pairs); the train and validation
    # splits of each extra_train_dirs folder join the profile's (data.load_splits; esci_us_wide: 403 queries)
    extra_eval_dirs: tuple[str, ...] = ()
    extra_train_dirs: tuple[str, ...] = ()
    extra_split_fractions: tuple[float, float, float] = (0.5, 0.1, 0.4)  # train / validation / test
    eval_limit: int | None = None  # None = the whole split
    eval_batch_size: int = 32
    eval_max_new_tokens: int = 128
    # first-token read-out: the grade logits as the model computes them (False; bf16 on a bf16 model, rounded to steps
    # of 0.125 near 16-32) or h . w in fp32 from the same states (True, inference.head_logits). The committed figures
    # were read with False; a True read-out is cached apart (predictions.readout_suffix) and ``python -m
    # she_lib.evaluate --fp32-logits --save`` saves it under results/fp32/ with the same method names
    eval_fp32_logits: bool = False
    # Zero-shot decoding only: the grade tag comes first (grade_first; `<grade>Exact</grade>` is 8 tokens),
    # so 24 tokens suffice to read a grade if the untrained model writes one at all. With 64 tokens the
    # decode took 1,002 s of the cpu job and parsed nothing either (README).
    zero_shot_max_new_tokens: int = 24
    # notebook 02's LLM-teacher demo: train pairs (a quarter per grade) x 2 sampled rationales of <= 128 tokens
    llm_teacher_examples: int = 24
    # read-outs for trained runs in notebook 05; the cpu job scores its SFT run by first token only
    # (decoding 795 rationales of ~100 tokens takes ~20 min here), cpu-full decodes too
    eval_trained_modes: tuple[str, ...] = ("generate", "first_token")
    # decoding only: score trained runs on k pairs of every eval query, drawn by a seeded hash (predictions.per_query;
    # None = all pairs); the first-token read-out always takes the whole split. Decoding is ~50x the cost of a
    # first-token read.
    eval_generate_per_query: int | None = None
    bootstrap_samples: int = 1000
    seed: int = 0
    # --- paths -----------------------------------------------------------------------------------
    results_dir: str = str(REPO_ROOT / "results")
    runs_dir: str = str(REPO_ROOT / "runs")
    cache_dir: str = field(default_factory=lambda: str(default_cache_dir()))

    def replace(self, **overrides) -> "Profile":
        return dataclasses.replace(self, **overrides)

    @property
    def is_tiny(self) -> bool:
        return self.model_source == "tiny"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- the profile table
# One entry per profile, its whole budget on one screen: ``profile``, the Profile fields it sets over the defaults
# above; then each stage's fields over the defaults of that stage's config: ``sft`` she_lib.sft.CoTSFTConfig,
# ``dpo`` she_lib.dpo.DPOBaselineConfig, ``genrm`` she_lib.genrm.GenRMConfig, ``rl`` the arguments of
# she_lib.rl.rl_config (SRPOConfig fields, plus num_generations x prompts_per_step rollouts per step and vllm),
# ``curriculum`` she_lib.curriculum.CurriculumConfig (the RL prompt set). A chat is ~310 tokens (prompt ~210,
# rationale ~100); a DPO pair costs about 2.7 SFT chats (policy forward + backward on chosen and rejected, reference
# forward on both). Measured speeds per machine are in the README.
TABLE: dict[str, dict[str, dict]] = {
    "smoke": dict(  # a tiny random model and 200 pairs: every stage runs in seconds, in tests and CI
        profile=dict(model_source="tiny", dtype="float32", max_pairs_per_query=10, max_pairs=200, max_seq_length=384,
                     eval_limit=24, eval_batch_size=8, eval_max_new_tokens=24, zero_shot_max_new_tokens=16,
                     bootstrap_samples=200, llm_teacher_examples=8,
                     results_dir=str(REPO_ROOT / "results" / "smoke"), runs_dir=str(REPO_ROOT / "runs" / "smoke"),
                     processed_dir=str(REPO_ROOT / "data_processed" / "smoke")),
        # a few steps, fp32 so tests are exact
        sft=dict(max_steps=4, per_device_batch_size=4, logging_steps=1, save_steps=2, bf16=False, train_limit=16,
                 eval_limit=8),
        dpo=dict(n_samples=2, sample_limit=6, max_new_tokens=16, sample_batch_size=3, max_steps=2,
                 per_device_batch_size=2, grad_accum=1, bf16=False),
        genrm=dict(teacher_pairs=8, corruptions_per_kind=2, policy_prompts=4, policy_samples=1,
                   policy_max_new_tokens=24, eval_teacher_pairs=4, eval_corruptions_per_kind=1, eval_policy_prompts=2,
                   max_steps=4, per_device_batch_size=4, logging_steps=1, save_steps=2, bf16=False, score_batch_size=8,
                   policy_base_fallback=True),
        rl=dict(num_generations=2, prompts_per_step=2, max_completion_length=16, logging_steps=1, save_steps=2),
        # the tiny model never writes a grade, so every prompt is always wrong and the prompt set is the difficulty
        # filter's fallback (min_prompts of the pool), the path a weak SFT model takes; one stage of 2 steps
        curriculum=dict(pool_limit=6, k_samples=2, max_new_tokens=16, sample_batch_size=3, min_prompts=4,
                        boundaries=(), stage_steps=(2,), per_query_cap=None),
        probe=dict(train_pairs_per_query=4, c_grid=(0.1, 1.0)),  # the grade probe (she_lib.grade_probe)
    ),
    "cpu": dict(  # the README's main job: every stage at a demo budget on a 2-core CPU, results in results/cpu/
        # 16 pairs per query (hash order; the same queries and split) with its own processed splits; one RL method
        # (SRPO), the GRPO / SRPO / AGRL comparison is cpu-full's; the SFT run is scored by first token only
        profile=dict(runs_dir=str(REPO_ROOT / "runs" / "cpu"), eval_trained_modes=("first_token",),
                     sft_orders=("grade_first",), results_dir=str(REPO_ROOT / "results" / "cpu"), rl_methods=("srpo",),
                     max_pairs_per_query=16, processed_dir=str(REPO_ROOT / "data_processed" / "cpu"),
                     llm_teacher_examples=8),
        # 320 pairs: one epoch = 40 steps of 8 chats
        sft=dict(train_limit=320, epochs=1, logging_steps=5, save_steps=10, eval_limit=32),
        dpo=dict(sample_limit=16),  # 16 prompts x 4 samples: the pass@k demo and <= 16 pairs
        # <= 32 + 4 x 12 + 16 = 96 rows
        genrm=dict(teacher_pairs=32, corruptions_per_kind=12, policy_prompts=16, policy_samples=1,
                   eval_teacher_pairs=24, eval_corruptions_per_kind=8, eval_policy_prompts=12),
        # 2 prompts x 4 rollouts of <= 128 tokens (a rationale is ~110) per step; lr 5e-5 so that a few LoRA steps
        # can move the policy
        rl=dict(num_generations=4, prompts_per_step=2, max_completion_length=128, logging_steps=1, save_steps=2,
                learning_rate=5e-5),
        curriculum=dict(pool_limit=16, k_samples=4, stage_steps=(1, 1, 1)),  # the pool is DPO's 16 sampled prompts
        # the grade probe on 8 train pairs of each train query (672) and the 8 validation pairs CumPT reads
        probe=dict(train_pairs_per_query=8, validation_pairs_per_query=8),
    ),
    "cpu-full": dict(  # the results table (results/): the same model on the full train split
        # decoded read-outs on 8 pairs of each test query (decoding is ~50x the cost of a first-token read)
        profile=dict(runs_dir=str(REPO_ROOT / "runs" / "cpu-full"), eval_generate_per_query=8, rl_seeds=(0, 1, 2)),
        # 480 pairs, one epoch of batch 8 = 60 optimizer steps: enough to learn the format (20 steps of 16 were not)
        sft=dict(train_limit=480, epochs=1, logging_steps=1, save_steps=10, eval_steps=30, eval_limit=32),
        dpo=dict(sample_limit=96),
        genrm={},  # GenRMConfig's defaults are cpu-full's (its docstring gives the row count)
        # 4 prompts x 4 rollouts of <= 128 tokens per step, 18 steps; the balanced order makes the 4 prompts of a step
        # one of each grade; the loss in 2 micro-batches of 8 rollouts (16 at once held 14 GiB of activations)
        rl=dict(num_generations=4, prompts_per_step=4, max_completion_length=128, logging_steps=1, save_steps=1,
                learning_rate=5e-5, gradient_accumulation_steps=2),
        # pass rates P(gold) at the grade token over 1,024 train pairs (one forward pass each) and one class-balanced
        # stage: with 96 pairs' sampled pass rates and the random order 17 of 24 groups were Exact, and every method
        # collapsed onto Exact. No easy -> hard stages here: under this SFT model pass rate and grade go together (the
        # easy and medium stages held Exact and Substitute prompts only), so the stages would hold the rare grades
        # back to the last third of the run
        curriculum=dict(pool_limit=1024, pass_source="first_token", stage_order="balanced", curriculum=False,
                        stage_steps=(18,)),
        probe={},  # every train and validation pair (GradeProbeConfig's defaults)
    ),
    "gpu-offline": dict(  # SmolLM2-135M from the GGUF on one offline CUDA GPU, bf16, every stage in minutes
        profile=dict(dtype="bfloat16", eval_batch_size=128, eval_generate_per_query=8,
                     extra_eval_dirs=(str(REPO_ROOT / "data_samples" / "esci_us_wide"),),
                     extra_train_dirs=(str(REPO_ROOT / "data_samples" / "esci_us_wide"),),
                     runs_dir=str(REPO_ROOT / "runs" / "gpu-offline"), results_dir=str(REPO_ROOT / "results" / "gpu")),
        # every train pair (esci_us and esci_us_wide's train split: 4,443), one epoch of batch 32 (a second left no
        # time for RL), the checkpoint kept by validation grade macro-F1 (512 pairs, every 50 steps)
        sft=dict(epochs=1, per_device_batch_size=32, logging_steps=10, save_steps=50, eval_steps=50, eval_limit=256,
                 class_balance=0.5, grade_eval_limit=512, select_by_grade_f1=True),
        dpo=dict(n_samples=4, sample_limit=256, sample_batch_size=64, per_device_batch_size=16, save_steps=100,
                 logging_steps=10),
        genrm=dict(teacher_pairs=512, corruptions_per_kind=128, policy_prompts=128, policy_samples=2,
                   eval_teacher_pairs=128, eval_corruptions_per_kind=32, eval_policy_prompts=128,
                   per_device_batch_size=32, save_steps=200, logging_steps=10, score_batch_size=64),
        rl=dict(num_generations=8, prompts_per_step=8, max_completion_length=128, logging_steps=1, save_steps=12,
                beta=0.02),
        curriculum=dict(pool_limit=256, k_samples=4, sample_batch_size=64, stage_steps=(4, 4, 4)),
        probe={},
    ),
    "gpu": dict(  # a hub model by name through Unsloth (CUDA), bf16
        profile=dict(model_source="hub", model_name="Qwen/Qwen2.5-0.5B-Instruct", dtype="bfloat16",
                     max_seq_length=1024, eval_batch_size=128, lora_r=32, lora_alpha=64,
                     runs_dir=str(REPO_ROOT / "runs" / "gpu")),
        sft=dict(epochs=2, per_device_batch_size=16, logging_steps=10, save_steps=200, eval_limit=512,
                 gradient_checkpointing=True),
        dpo=dict(n_samples=8, sample_limit=2048, sample_batch_size=64, per_device_batch_size=8, save_steps=100,
                 logging_steps=10),
        genrm=dict(teacher_pairs=None, corruptions_per_kind=1000, policy_prompts=1000, policy_samples=4,
                   eval_teacher_pairs=None, eval_corruptions_per_kind=200, eval_policy_prompts=400, epochs=2,
                   per_device_batch_size=16, save_steps=200, logging_steps=10, score_batch_size=64),
        rl=dict(num_generations=8, prompts_per_step=16, max_completion_length=256, logging_steps=5, save_steps=50,
                beta=0.02, vllm="auto"),
        curriculum=dict(pool_limit=4096, k_samples=8, sample_batch_size=64, stage_steps=(100, 100, 100)),
        probe={},
    ),
    "colab": dict(  # like gpu, sized for a free Colab T4 (fp16, smaller batches)
        profile=dict(model_source="hub", model_name="Qwen/Qwen2.5-0.5B-Instruct", dtype="auto", max_seq_length=768,
                     eval_batch_size=64, runs_dir=str(REPO_ROOT / "runs" / "colab")),
        sft=dict(epochs=2, per_device_batch_size=8, grad_accum=2, logging_steps=10, save_steps=200, eval_limit=256,
                 gradient_checkpointing=True),
        dpo=dict(n_samples=8, sample_limit=1024, sample_batch_size=32, save_steps=100, logging_steps=10),
        genrm=dict(teacher_pairs=None, corruptions_per_kind=500, policy_prompts=400, policy_samples=2,
                   eval_corruptions_per_kind=100, eval_policy_prompts=200, epochs=2, grad_accum=2, save_steps=200,
                   logging_steps=10, score_batch_size=32),
        rl=dict(num_generations=8, prompts_per_step=8, max_completion_length=256, logging_steps=5, save_steps=50,
                beta=0.02, vllm="auto"),
        curriculum=dict(pool_limit=1024, k_samples=8, sample_batch_size=32, stage_steps=(40, 40, 40)),
        probe={},
    ),
}
STAGES = ("sft", "dpo", "genrm", "rl", "curriculum", "probe")

PROFILES: dict[str, Profile] = {name: Profile(name=name, **entry["profile"]) for name, entry in TABLE.items()}


def stage_budget(profile: Profile | str, stage: str) -> dict:
    """The fields ``stage`` (one of :data:`STAGES`) takes for ``profile`` from :data:`TABLE`, a copy; empty for a
    profile the table does not name (the stage config's defaults apply)."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; choose one of {STAGES}")
    name = profile.name if isinstance(profile, Profile) else profile
    return dict(TABLE.get(name, {}).get(stage, {}))


def get_profile(name: str | Profile = "cpu", **overrides) -> Profile:
    """Return the named profile with ``overrides`` applied (unknown names raise with the choices)."""
    if isinstance(name, Profile):
        return name.replace(**overrides) if overrides else name
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Profile)}
    if unknown:
        raise TypeError(f"unknown Profile field(s) {sorted(unknown)}")
    return PROFILES[name].replace(**overrides)
