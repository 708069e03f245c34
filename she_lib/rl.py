"""RL runs of the three methods on one machinery: ``train_rl(profile, "grpo" | "srpo" | "agrl", sft_run)``.

* budgets: :func:`rl_config` (an :class:`she_lib.srpo_config.SRPOConfig` per method and profile) and :func:`curriculum_for`
  (the prompt set's pool, sampling and stages, she_lib.curriculum), from the profile table of she_lib.config;
* the prompt set: :func:`rl_prompts` (pass rates from the shared sample cache of the SFT run);
* the trainer: ``grpo`` -> TRL's ``GRPOTrainer`` (she_lib.prompt_sharing's subclass: each group's prompt run once in
  the loss) with she_lib.rewards' ``OutcomeReward``; ``srpo`` -> she_lib.srpo_trainer's ``SRPOTrainer``
  with the hybrid examiner's step rewards; ``agrl`` -> ``SRPOTrainer`` with she_lib.rules' rule reward, she_lib.agrl's
  replay and process weight 0;
* rollouts: she_lib.rollouts (``SRPOConfig.rollout_engine``; on a CPU a merged bf16/fp32 copy of the policy, each
  prompt prefilled once for its G samples), or TRL's own ``generate`` / vLLM;
* the run folder: she_lib.runs (resume from the last checkpoint, reuse a finished run); ``data_report.json``,
  ``rollouts.jsonl`` (SRPO / AGRL, for the inspector), ``run.json`` (with AGRL's replay report);
* the CLI: ``python -m she_lib.rl --method srpo --profile cpu-full --sft runs/cpu-full/sft [--seed 1] [--genrm ...]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from transformers import TrainerCallback

from . import runs
from .agrl import HINTS, AdaptiveReplay, AGRLConfig
from .config import Profile, get_profile, stage_budget
from .curriculum import CurriculumConfig, build_rl_prompts, save_report
from .data import load_splits
from .distributed import is_main_process, world_size
from .evaluate import report_run
from .examiner import Examiner, HybridConfig
from .genrm import GenRM
from .labels import get_scale
from .modeling import load_run
from .predictions import predict_llm
from .prompt_sharing import SharedPromptGRPOTrainer
from .rewards import OnlineRecallWeights, OutcomeReward, recall_weights
from .rl_report import reward_tail, run_name
from .rollouts import rollout_func_for
from .rules import RuleReward, RuleRewardConfig
from .sampling import cache_covers, sample_cache, sample_rationales, samples_dir
from .schema import build_messages
from .sft import _precision, _sample
from .srpo_config import SRPOConfig
from .srpo_trainer import SRPOTrainer

METHODS = ("grpo", "srpo", "agrl")

RECORD_COLUMNS = ("example_id", "query", "title", "brand", "colour", "category", "bullets", "description", "label",
                  "query_terms", "negated_terms", "product_type", "matched_terms", "missing_terms", "negation_hits",
                  "negation_met", "evidence")  # evidence: only where the profile sets prompt_evidence


def rl_config(profile: Profile | str, method: str = "srpo", output_dir: str | Path = "rl", **overrides) -> SRPOConfig:
    """The SRPOConfig of a method and profile: the ``rl`` entry of she_lib.config.TABLE over the defaults here, then
    ``overrides``. One optimizer step = ``prompts_per_step`` prompts x G rollouts, generated at once and trained in
    ``gradient_accumulation_steps`` micro-batches (``per_device_train_batch_size`` = their product / the number of
    processes of the launch / the micro-batches; TRL generates ``steps_per_generation`` = that many micro-batches'
    rollouts together, so the step's groups and advantages are the same, only the activations held at once shrink).
    ``grpo`` sets process_weight 0 (and trains with TRL's GRPO algorithm); CPU runs train fp32 weights (bf16 autocast where the CPU
    has it) without gradient checkpointing and without a reference model (beta = 0 saves a forward pass per step;
    set beta for the KL term), sample from she_lib.rollouts and run each group's prompt once in the loss."""
    if method not in METHODS:
        raise ValueError(f"unknown RL method {method!r}; choose one of {METHODS}")
    profile = get_profile(profile)
    merged = {**stage_budget(profile, "rl"), **overrides}
    vllm = merged.pop("vllm", "off")
    merged.update(vllm_settings(vllm))
    g, pps = merged.pop("num_generations", 4), merged.pop("prompts_per_step", 4)
    accum = merged.pop("gradient_accumulation_steps", 1)  # micro-batches of a step's rollouts (memory, not maths)
    per_device = per_device_rollouts(g, pps, world_size())
    if per_device % accum:
        raise ValueError(f"{per_device} rollouts per process and step do not split into {accum} micro-batches")
    per_device //= accum
    cpu = not torch.cuda.is_available()
    bf16, fp16 = _precision("auto")
    base = dict(output_dir=str(output_dir), report_to="none", use_cpu=cpu, bf16=bf16, fp16=fp16,
                gradient_checkpointing=not cpu, num_generations=g, per_device_train_batch_size=per_device,
                gradient_accumulation_steps=accum, learning_rate=2e-5, lr_scheduler_type="constant", warmup_steps=0,
                temperature=1.0, beta=0.0, shuffle_dataset=False, seed=profile.seed, data_seed=profile.seed,
                save_total_limit=2, log_completions=False, max_steps=1,
                process_weight=1.0 if method == "srpo" else 0.0)  # AGRL: rule rewards + replay on GRPO advantages
    return SRPOConfig(**{**base, **merged})


def per_device_rollouts(num_generations: int, prompts: int, processes: int) -> int:
    """Rollouts per process and step: prompts x G rollouts split evenly over the processes of a launch."""
    if (num_generations * prompts) % processes:
        raise ValueError(f"{prompts} prompts x {num_generations} rollouts per step do not split over {processes} processes")
    return num_generations * prompts // processes


def vllm_settings(vllm: str) -> dict:
    """GRPOConfig fields for rollouts with vLLM (TRL's ``use_vllm``): ``off``; ``colocate`` (vLLM shares the training
    GPU); ``server`` (a separate ``trl vllm-serve --model <merged SFT checkpoint>`` process); ``auto`` = colocate
    when vllm is installed and CUDA is present, else off. The step spans are read from the completion token ids
    whatever produced them (:func:`token_char_offsets`), so SRPO's step rewards need nothing vLLM-specific."""
    if vllm == "auto":
        vllm = "colocate" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "off"
    if vllm == "off":
        return {"use_vllm": False}
    if vllm not in ("colocate", "server"):
        raise ValueError(f"vllm must be auto, off, colocate or server, got {vllm!r}")
    return {"use_vllm": True, "vllm_mode": vllm, "vllm_gpu_memory_utilization": 0.3}


def prompts_per_step(args: SRPOConfig) -> int:
    """Prompts per optimizer step over all processes."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size() // args.num_generations


def rl_dataset(df: pd.DataFrame, profile: Profile):
    """``datasets.Dataset`` of {"prompt": [system, user], record columns..., "stage"} in the given order."""
    scale = get_scale(profile.grade_scale)
    cols = [c for c in (*RECORD_COLUMNS, "stage", "pass_rate") if c in df.columns]
    rows = []
    for r in df[cols].to_dict("records"):
        rows.append({"prompt": build_messages(r, scale, profile.order),
                     **{c: (list(v) if isinstance(v, (list, tuple, np.ndarray)) else v) for c, v in r.items()}})
    return Dataset.from_list(rows)


def train_rl(profile: Profile, method: str, sft_run: str | Path, args: SRPOConfig | None = None,
             curriculum=None, splits: dict | None = None, name: str | None = None, examiner: Examiner | None = None,
             resume: bool = True, callbacks: list | None = None, progress: bool = False,
             replay: AGRLConfig | None = None) -> Path:
    """RL from an SFT run; returns ``runs_dir/name`` (she_lib.runs protocol: resumes, reuses a finished run).

    1. Prompt set: pass-rate samples of the pool from the SFT model (cached, keyed by the SFT run's stamp), then
       difficulty filter, diversity selection and curriculum order (she_lib.curriculum); ``data_report.json``.
    2. Model: the SFT adapter merged into the base and a fresh LoRA on top (as DPO), so the adapter-disabled
       model is the SFT policy (TRL's reference when ``beta`` > 0).
    3. Trainer: ``grpo`` -> ``SharedPromptGRPOTrainer`` (TRL's GRPO) with :class:`OutcomeReward` (with
       ``advantage_baseline="batch"``: :class:`SRPOTrainer` at process_weight 0); ``srpo`` -> :class:`SRPOTrainer`
       with the examiner's step rewards; ``agrl`` -> :class:`SRPOTrainer` with she_lib.rules' rule reward and
       she_lib.agrl's adaptive guided replay (process_weight as configured; 0 = AGRL on GRPO's advantages).
       ``max_steps`` is the curriculum's step count; the rollout log goes to ``rollouts.jsonl``. ``replay``: AGRL's
       replay settings (default AGRLConfig(); part of an AGRL run's key)."""
    from .trl_compat import ensure_trl_cpu_support  # patches TRL on import: only where a trainer is built

    name = name or method
    run, sft_run = Path(profile.runs_dir) / name, Path(sft_run)
    args = args or rl_config(profile, method, run / "checkpoints")
    args.output_dir = str(run / "checkpoints")
    curriculum = curriculum or curriculum_for(profile)
    init = os.path.relpath(sft_run.resolve(), run.resolve())
    scorer = getattr(getattr(examiner, "genrm", None), "source", None) or (
        "verifier" if getattr(examiner, "genrm", None) is None else type(examiner.genrm).__name__)
    key = {"method": method, "args": _args_key(args), "curriculum": curriculum.to_dict(), "init_adapter": init,
           "examiner": {"scorer": scorer, **dataclasses.asdict(examiner.config)} if examiner else "verifier"}
    replay = replay or AGRLConfig()
    if method == "agrl":
        key["replay"] = dataclasses.asdict(replay)
    if resume and runs.finished(run, profile, key):
        return run
    scale = get_scale(profile.grade_scale)
    prompts, report = rl_prompts(profile, sft_run, curriculum, prompts_per_step(args), splits, progress)
    args.max_steps = report["curriculum"]["steps"]
    last = runs.start(run, profile, key)
    last = last if resume else None
    if is_main_process():
        save_report(report, run / "data_report.json")
    policy = load_run(sft_run, profile if torch.cuda.is_available() else profile.replace(dtype="float32"))
    ensure_trl_cpu_support()
    meter = runs.Meter()
    common = dict(model=policy.model, args=args, train_dataset=rl_dataset(prompts, profile), processing_class=policy.tokenizer,
                  peft_config=policy.lora_config, callbacks=[meter, StageLogger(prompts["stage"].tolist(),
                                                                                prompts_per_step(args)),
                                                             *(callbacks or [])],
                  rollout_func=rollout_func_for(args, policy.model, scale.words))
    eos = [policy.tokenizer.eos_token_id]  # a rollout cut at the token limit earns 0 (she_lib.rewards.truncated)
    weights = outcome_weights(args, prompts, method)
    if method == "grpo" and args.advantage_baseline == "group" and not args.sft_weight:
        trainer = SharedPromptGRPOTrainer(reward_funcs=[OutcomeReward(scale, eos_token_ids=eos,
                                                                      grade_weights=weights)], **common)
    elif method in ("grpo", "srpo"):  # GRPO with another baseline: SRPO's trainer at process_weight 0
        trainer = SRPOTrainer(reward_funcs=[OutcomeReward(scale, eos_token_ids=eos, grade_weights=weights)],
                              examiner=examiner, scale=scale, order=profile.order,
                              rollout_log=run / "rollouts.jsonl", **common)
    else:
        trainer = SRPOTrainer(reward_funcs=[RuleReward(RuleRewardConfig(), scale, eos_token_ids=eos)],
                              examiner=examiner, scale=scale, order=profile.order,
                              replay=AdaptiveReplay(replay, scale, profile.order),
                              rollout_log=run / "rollouts.jsonl", **common)
    if last is None and is_main_process() and (run / "rollouts.jsonl").exists():
        (run / "rollouts.jsonl").unlink()  # a fresh start: the log of an earlier attempt is stale
    runs.fit(trainer, run, last, meter, profile, key, kind=method, order=profile.order, init_adapter=init,
             data=report, processes=world_size())
    if is_main_process():  # kept in run.json, so in the read-outs' metrics entries when runs/ is gone
        info = {**json.loads((run / "run.json").read_text()), "final_reward": reward_tail(run)}
        if method == "agrl":  # how often replay fired and whether those prompts recovered
            info["replay"] = trainer.replay.report()
        (run / "run.json").write_text(json.dumps(info, indent=2))
    return run


def outcome_weights(args: SRPOConfig, prompts: pd.DataFrame, method: str = "grpo") -> dict | None:
    """The outcome reward's grade weights of ``args.grade_weighting``: None ("none"), she_lib.rewards.recall_weights
    of the prompt set's labels and pass rates ("recall"), or she_lib.rewards.OnlineRecallWeights starting there
    ("recall_online"); group-scaled advantages would divide them out. AGRL's rule reward takes no weights: asking for
    them there is an error, not a setting silently dropped."""
    if args.grade_weighting == "none":
        return None
    if method == "agrl":
        raise ValueError("grade_weighting weights the outcome reward of grpo and srpo; agrl's rule reward has none")
    if args.grade_weighting not in ("recall", "recall_online"):
        raise ValueError(f"grade_weighting must be none, recall or recall_online, got {args.grade_weighting!r}")
    if args.scale_rewards == "group":
        raise ValueError(f"grade_weighting {args.grade_weighting!r} needs scale_rewards 'batch' or 'none' (a group's "
                         "std divides it out)")
    if args.grade_weighting == "recall_online":
        return OnlineRecallWeights(prompts["label"], prompts["pass_rate"], args.grade_weight_max,
                                   args.grade_weight_momentum)
    return recall_weights(prompts["label"], prompts["pass_rate"], args.grade_weight_max)


def rl_prompts(profile: Profile, sft_run: str | Path, curriculum=None, per_step: int = 4, splits: dict | None = None,
               progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """The RL prompt set in training order and its report (she_lib.curriculum): the pool's pass rates come from
    ``k_samples`` rationales per prompt sampled from the SFT run, in the shared sample cache (sampling.sample_cache):
    every RL method and seed shares them, and so does DPO when it samples the same prompts the same way."""
    curriculum = curriculum or curriculum_for(profile)
    splits = splits if splits is not None else load_splits(profile)
    pool = _sample(splits["train"], curriculum.pool_limit, curriculum.seed)
    words = get_scale(profile.grade_scale).words
    if not (curriculum.difficulty or curriculum.curriculum):  # no filter, no stages: no pass rates to estimate
        return build_rl_prompts(pool, None, curriculum, words, per_step)
    if curriculum.pass_source == "first_token":
        rates = first_token_pass_rates(profile, sft_run, pool, progress)
        return build_rl_prompts(pool, None, curriculum, words, per_step, rates=rates)
    samples = None
    if curriculum.difficulty or curriculum.curriculum:
        sft_run = Path(sft_run)
        cache = sample_cache(profile, sft_run, curriculum.k_samples, curriculum.max_new_tokens, curriculum.temperature,
                             1.0, curriculum.sample_batch_size, curriculum.seed)
        model = tok = None  # a complete cache needs no model
        if not cache_covers(cache, pool):
            policy = load_run(sft_run, profile)
            model, tok = policy.model, policy.tokenizer
        samples = sample_rationales(model, tok, pool, profile, curriculum.k_samples,
                                    curriculum.max_new_tokens, curriculum.temperature, 1.0,
                                    curriculum.sample_batch_size, curriculum.seed, cache=cache, progress=progress)
    return build_rl_prompts(pool, samples, curriculum, words, per_step)


def first_token_pass_rates(profile: Profile, sft_run: str | Path, pool: pd.DataFrame,
                           progress: bool = False) -> pd.Series:
    """example_id -> P(gold grade) at the grade's first token under the SFT run (she_lib.curriculum, step 1),
    cached beside the run's samples (``runs_dir/samples/<run>_<stamp>/first_token_<order>.jsonl``, resumable)."""
    if profile.order != "grade_first":
        raise ValueError("pass_source 'first_token' needs the grade_first order (the grade is the first thing "
                         f"sampled); this run is {profile.order!r}")
    cache = samples_dir(profile, sft_run) / f"first_token_{profile.order}.jsonl"
    model = tok = None
    if not cache_covers(cache, pool):
        policy = load_run(sft_run, profile)
        model, tok = policy.model, policy.tokenizer
    preds = predict_llm(model, tok, pool, profile, "first_token", cache=cache, progress=progress)
    p = [row[f"p_{label}"] for row, label in zip(preds.to_dict("records"), pool["label"])]
    return pd.Series(p, index=pool["example_id"].to_numpy(), dtype=float)


LATER_FIELDS = {"sft_weight": 0.0}  # fields added after runs were trained: at these defaults they stay out of the key


def _args_key(args: SRPOConfig) -> dict:
    """The fields of an SRPOConfig that define a run (paths, logging and max_steps, set by the curriculum, excluded;
    a field of ``LATER_FIELDS`` only where it differs from its default, so earlier runs keep their keys)."""
    skip = {"output_dir", "logging_dir", "max_steps", "logging_steps", "save_steps", "report_to", *runs.SPEED_ONLY}
    d = {k: v for k, v in args.to_dict().items()
         if k not in skip and not (k in LATER_FIELDS and LATER_FIELDS[k] == v)}
    return json.loads(json.dumps(d, default=str))


def curriculum_for(profile: Profile | str, **overrides):
    """The RL prompt set's pool, sampling and stages (she_lib.curriculum.CurriculumConfig): the ``curriculum`` entry
    of she_lib.config.TABLE, then ``overrides``. A steps-first policy writes its grade last, so it has no first-token
    pass rate: where the budget reads pass rates there and sets no stages, a steps-first run skips the difficulty
    filter (under the grade-first SFT model the cpu-full band kept 1,022 of 1,024 prompts) and its prompts weigh
    alike, pass rate 0.5 (online grade weights then start equal and follow the rollouts)."""
    profile = get_profile(profile)
    budget = stage_budget(profile, "curriculum")  # seed 0: RL seeds share one prompt set
    if profile.order != "grade_first" and budget.get("pass_source") == "first_token" and \
            not budget.get("curriculum", True):
        budget = {**budget, "difficulty": False}
    return CurriculumConfig(**{**budget, **overrides})


class StageLogger(TrainerCallback):
    """Logs the curriculum stage of each optimizer step (``stage`` in the trainer's log history)."""

    def __init__(self, stages: list[int], per_step: int):
        self.stages, self.per_step = stages, per_step

    def on_log(self, args, state, control, logs=None, **kw):
        if logs is not None and "loss" in logs and state.global_step > 0:
            stage = int(self.stages[min((state.global_step - 1) * self.per_step, len(self.stages) - 1)])
            logs["stage"] = stage
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1]["stage"] = stage  # the trainer logged a copy of ``logs``


def main(argv=None) -> int:
    """``python -m she_lib.rl --method srpo --profile cpu-full --sft runs/cpu-full/sft [--seed 1] [--stage-order
    balanced] [--evaluate ...]``"""
    ap = argparse.ArgumentParser(prog="python -m she_lib.rl", description="GRPO / SRPO / AGRL from an SFT run")
    ap.add_argument("--method", choices=METHODS, default="srpo")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--sft", required=True)
    ap.add_argument("--seed", type=int, default=0, help="the RL seed (LoRA init, sampling); the prompt set is shared")
    ap.add_argument("--name", default=None, help="run folder name (default: <method>, or <method>_s<seed>)")
    ap.add_argument("--genrm", default=None, help="a GenRM run folder for the examiner (default: verifier only)")
    ap.add_argument("--vllm", choices=["auto", "off", "colocate", "server"], default=None,
                    help="rollouts with vLLM (default: auto on the gpu/colab profiles, off elsewhere)")
    ap.add_argument("--stage-order", choices=["random", "balanced"], default=None,
                    help="how curriculum stages fill their slots (she_lib.curriculum; default: the profile's); "
                         "balanced names the run <method>_bal")
    ap.add_argument("--stage-steps", type=int, nargs="+", default=None,
                    help="optimizer steps of each curriculum stage (CurriculumConfig.stage_steps; default: the "
                         "profile's; needs --name)")
    ap.add_argument("--scale-rewards", choices=["group", "batch", "none"], default=None,
                    help="TRL's reward scaling (default: the profile's, TRL's 'group'); another names the run "
                         "<method>[_bal]_<scale>")
    ap.add_argument("--replace-fraction", type=float, default=None,
                    help="AGRL: share of a flagged group's rollouts generated with the hint (AGRLConfig; needs --name)")
    ap.add_argument("--hint", choices=HINTS, default=None,
                    help="AGRL: what a guided rollout is told (AGRLConfig.hint: the gold grade, or it and the accepted "
                         "step verdicts; needs --name)")
    ap.add_argument("--grade-temperature", type=float, default=None,
                    help="exploration temperature of the grade token (SRPOConfig.grade_temperature; needs --name)")
    ap.add_argument("--baseline", choices=["group", "batch"], default=None,
                    help="the outcome advantage's baseline (SRPOConfig.advantage_baseline; needs --name)")
    ap.add_argument("--grade-weighting", choices=["none", "recall", "recall_online"], default=None,
                    help="the outcome reward's grade weights (SRPOConfig.grade_weighting; needs --name)")
    ap.add_argument("--min-p", type=float, default=None, help="TRL's min_p for the rollouts (needs --name)")
    ap.add_argument("--learning-rate", type=float, default=None, help="the RL learning rate (needs --name)")
    ap.add_argument("--beta", type=float, default=None,
                    help="the KL anchor to the start model (TRL's beta; the adapter-disabled model is the reference, "
                         "grade head included; needs --name)")
    ap.add_argument("--sft-weight", type=float, default=None,
                    help="the SFT anchor: the teacher rationale's NLL added to the loss x this weight "
                         "(she_lib.sft_anchor; needs --name)")
    ap.add_argument("--evaluate", nargs="*", default=[], choices=["generate", "first_token"])
    ap.add_argument("--save", action="store_true")
    a = ap.parse_args(argv)
    replay = {k: v for k, v in (("replace_fraction", a.replace_fraction), ("hint", a.hint)) if v is not None}
    if replay and not (a.method == "agrl" and a.name):
        ap.error("--replace-fraction and --hint are AGRL settings and their run needs its own --name")
    variant = {k: v for k, v in (("grade_temperature", a.grade_temperature), ("min_p", a.min_p),
                                 ("advantage_baseline", a.baseline), ("grade_weighting", a.grade_weighting),
                                 ("learning_rate", a.learning_rate), ("beta", a.beta),
                                 ("sft_weight", a.sft_weight))
               if v is not None}
    if (variant or a.stage_steps) and not a.name:
        ap.error("--grade-temperature, --min-p, --baseline, --grade-weighting, --learning-rate, --beta, --sft-weight and "
                 "--stage-steps make a variant, and its run needs its own --name")
    sft_info = json.loads((Path(a.sft) / "run.json").read_text())
    profile = get_profile(a.profile, order=sft_info.get("order", "grade_first"))
    examiner = None
    if a.genrm:
        examiner = Examiner(GenRM.load(a.genrm, profile), HybridConfig(), profile.grade_scale)
    curriculum = curriculum_for(profile, **({"stage_order": a.stage_order} if a.stage_order else {}),
                                **({"stage_steps": tuple(a.stage_steps)} if a.stage_steps else {}))
    name = a.name or run_name(a.method, a.seed, curriculum.stage_order, a.scale_rewards)
    args = rl_config(profile, a.method, seed=a.seed, data_seed=a.seed, **({"vllm": a.vllm} if a.vllm else {}),
                     **({"scale_rewards": a.scale_rewards} if a.scale_rewards else {}), **variant)
    run = train_rl(profile, a.method, a.sft, args, curriculum, name=name, examiner=examiner, progress=True,
                   replay=AGRLConfig(**replay))
    if not is_main_process():
        return 0
    info = json.loads((run / "run.json").read_text())
    print(json.dumps({k: info.get(k) for k in ("kind", "global_step", "train_loss", "seconds")}, indent=1))
    if a.evaluate:
        report_run(run, profile, a.evaluate, a.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
