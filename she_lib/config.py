"""Profiles: one config object for every notebook and script.

A profile fixes the model, the data and every budget of a run. Notebooks take one parameter,
``profile`` (papermill ``-p profile smoke``), and call :func:`get_profile`; everything else reads
fields of the returned :class:`Profile`. Overrides are keyword arguments, so an ablation is
``get_profile("cpu", eval_max_new_tokens=64)``, never an edited constant.

Profiles
--------
smoke     tiny Llama built from a config in code (real SmolLM2 tokenizer), 200 pairs of 20 queries; CI.
cpu       SmolLM2-135M-Instruct offline on 2 CPU cores, every stage at a demo budget (README's main job): 16
          pairs per query, a 40-step SFT; 35 min on a 2-core AVX512-BF16 CPU, 74 min in fp32 on an AVX2-only one (README).
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
    # --- RL (notebook 04; budgets in she_lib.rl.rl_config / curriculum_for) ------------------------
    rl_methods: tuple[str, ...] = ("grpo", "srpo", "agrl")
    rl_seeds: tuple[int, ...] = (0,)  # RL seeds (LoRA init, sampling); every seed shares one prompt set
    # --- evaluation ------------------------------------------------------------------------------
    eval_split: str = "test"
    # further ESCI folders scored as a whole by she_lib.pipeline (no query shared with data_dir), each into
    # results_dir/<folder name>/metrics.json: data_samples/esci_us_wide gives a test set of 673 queries
    extra_eval_dirs: tuple[str, ...] = ()
    eval_limit: int | None = None  # None = the whole split
    eval_batch_size: int = 32
    eval_max_new_tokens: int = 128
    # Zero-shot decoding only: the grade tag comes first (grade_first; `<grade>Exact</grade>` is 8 tokens),
    # so 24 tokens suffice to read a grade if the untrained model writes one at all. With 64 tokens the
    # decode took 1,002 s of the cpu job and parsed nothing either (README).
    zero_shot_max_new_tokens: int = 24
    # notebook 02's LLM-teacher demo: train pairs (a quarter per grade) x 2 sampled rationales of <= 128 tokens
    llm_teacher_examples: int = 24
    # read-outs for trained runs in notebook 05; the cpu job scores its SFT run by first token only
    # (decoding 795 rationales of ~100 tokens takes ~20 min here), cpu-full decodes too
    eval_trained_modes: tuple[str, ...] = ("generate", "first_token")
    # decoding only: score trained runs on k pairs of every eval query, drawn by a seeded hash (evaluate.per_query;
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


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", model_source="tiny", dtype="float32", max_pairs_per_query=10, max_pairs=200, max_seq_length=384,
        eval_limit=24, eval_batch_size=8, eval_max_new_tokens=24, zero_shot_max_new_tokens=16, bootstrap_samples=200,
        llm_teacher_examples=8,
        results_dir=str(REPO_ROOT / "results" / "smoke"), runs_dir=str(REPO_ROOT / "runs" / "smoke"),
        processed_dir=str(REPO_ROOT / "data_processed" / "smoke")),
    # the README's main job writes results/cpu/; the headline results/ is cpu-full's
    # the main job runs one RL method (SRPO, <= 3 steps); the GRPO / SRPO / AGRL comparison is cpu-full's
    # 16 pairs per query (hash order; the same queries and split, ~290 test pairs instead of 795) with its own
    # processed splits: on a 2-core AVX2-only CPU (fp32) the job with every pair took over 2 hours
    "cpu": Profile(name="cpu", runs_dir=str(REPO_ROOT / "runs" / "cpu"), eval_trained_modes=("first_token",),
                   sft_orders=("grade_first",), results_dir=str(REPO_ROOT / "results" / "cpu"), rl_methods=("srpo",),
                   max_pairs_per_query=16, processed_dir=str(REPO_ROOT / "data_processed" / "cpu"),
                   llm_teacher_examples=8),
    # decoded read-outs on 8 pairs of each of the 18 test queries (144 pairs): an AVX2-only 2-core CPU decodes
    # an SFT rationale in ~7-12 s, so all 795 would take ~2 h per run
    "cpu-full": Profile(name="cpu-full", runs_dir=str(REPO_ROOT / "runs" / "cpu-full"), eval_generate_per_query=8,
                        rl_seeds=(0, 1)),
    "gpu-offline": Profile(
        name="gpu-offline", dtype="bfloat16", eval_batch_size=128, eval_generate_per_query=8,
        extra_eval_dirs=(str(REPO_ROOT / "data_samples" / "esci_us_wide"),),
        runs_dir=str(REPO_ROOT / "runs" / "gpu-offline"), results_dir=str(REPO_ROOT / "results" / "gpu")),
    "gpu": Profile(
        name="gpu", model_source="hub", model_name="Qwen/Qwen2.5-0.5B-Instruct", dtype="bfloat16",
        max_seq_length=1024, eval_batch_size=128, lora_r=32, lora_alpha=64, runs_dir=str(REPO_ROOT / "runs" / "gpu")),
    "colab": Profile(
        name="colab", model_source="hub", model_name="Qwen/Qwen2.5-0.5B-Instruct", dtype="auto",
        max_seq_length=768, eval_batch_size=64, runs_dir=str(REPO_ROOT / "runs" / "colab")),
}


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
