"""SRPO: GRPO whose token advantages carry step rewards from the hybrid examiner (TaoSR-SHE), and the RL
baselines on the same machinery: vanilla GRPO (TRL's ``GRPOTrainer`` as is) and AGRL (she_lib.agrl).

For a group of G rollouts of one prompt, rollout i with outcome reward R_i (:class:`OutcomeReward`), step
rewards r_{i,k} in [0, 1] for the K = 5 steps of STEPS (she_lib.examiner) and outcome correctness c_i:

    A_out_i   = (R_i - mean_g R) / (std_g R + 1e-4)                          TRL's GRPO advantage, unchanged
    z_{i,k}   = (r_{i,k} - mean(S)) / (std(S) + 1e-4)     S = all G x K step rewards of the group (unbiased std;
                                                          DeepSeekMath process supervision, PAPERS §6.2)
    wrong     = r_{i,k} < step_threshold, right = r_{i,k} >= step_threshold, for *judged* steps only (a missing step
                or an unparsable / over-length rollout gets a default reward, not a verdict: it is never critical)
    first_{i,k} = 1 if not c_i and k is the first wrong step of rollout i (where its error starts)
    disc_{i,k}  = 1 if step k is *discriminative* in the group (some right rollout has it right and some wrong
                  rollout has it wrong) and rollout i's verdict on it agrees with its outcome (right-right or
                  wrong-wrong)
    w_{i,k}   = 1 + kappa_first_error * first_{i,k} + kappa_discriminative * disc_{i,k}
    a_{i,k}   = w_{i,k} * z_{i,k}                                             critical steps count (1 + kappa) x
    P_{i,k}   = a_{i,k}                              process_credit = "step"
              = sum of a_{i,k'} over present steps k' written at or after k   process_credit = "to_go" (default,
                                                                               DeepSeekMath's return-to-go)
    A_{i,t}   = A_out_i + process_weight * P_{i,k(t)}   for a token t inside step k's tagged element
              = A_out_i                                  for every other token (the <grade> tag, the end token)
    A_{i,t}   <- clamp(A_{i,t}, -advantage_clip, advantage_clip)   when advantage_clip is set

Steps are located in the completion's *tokens*: the completion ids are decoded prefix by prefix
(:func:`token_char_offsets`), so the spans hold for any generation backend (HF ``generate`` or vLLM). The (G*B, T)
advantage goes to TRL's ``_compute_loss``, which keeps GRPO's clipping, KL term and loss types; with
``process_weight = 0`` every token gets A_out_i and SRPO is GRPO exactly (tested on loss and gradients).

Under ``accelerate launch`` a group's rollouts may sit on several processes: step rewards and correctness are
gathered, group statistics computed on the whole batch, then each process keeps its slice (as TRL does for R).

:class:`SRPOTrainer` overrides one hook, ``_generate_and_score_completions``; AGRL's replay (she_lib.agrl) hooks
into the same method through ``prepare_inputs`` / ``adjust_outputs`` callbacks. Every knob is a field of
:class:`SRPOConfig` (a ``trl.GRPOConfig``). Training, data and resuming: :func:`train_rl`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from .config import Profile, get_profile
from .examiner import Examiner, HybridConfig
from .labels import GradeScale, get_scale
from .schema import STEPS, char_to_token_spans, completion_text, parse

METHODS = ("grpo", "srpo", "agrl")
CRITICAL = ("", "first_error", "discriminative")


@dataclass
class SRPOConfig(GRPOConfig):
    """TRL's GRPOConfig plus SRPO's advantage fields (see the module doc for the formula)."""
    process_weight: float = field(default=1.0, metadata={"help": "lambda_p; 0 = vanilla GRPO"})
    kappa_first_error: float = field(default=1.0, metadata={"help": "extra weight of a wrong rollout's first wrong step"})
    kappa_discriminative: float = field(default=1.0, metadata={"help": "extra weight of a discriminative step"})
    step_threshold: float = field(default=0.5, metadata={"help": "a step reward below it reads as a wrong step"})
    process_credit: str = field(default="to_go", metadata={"help": "'to_go' (own + later steps) or 'step'"})
    advantage_clip: float | None = field(default=None, metadata={"help": "clamp token advantages to +-clip"})
    rollout_log_every: int = field(default=1, metadata={"help": "write rollouts.jsonl every k generations (0 = off)"})


# ------------------------------------------------------------------------------------------ rewards
class OutcomeReward:
    """R = 1[parsed grade == human label] + format_weight * 1[well formed]; unparsable output earns 0.

    A TRL reward function (``prompts, completions, label, **columns -> list[float]``); GRPO and SRPO share it."""

    def __init__(self, scale: GradeScale | str = "esci", format_weight: float = 0.1):
        self.scale = get_scale(scale) if isinstance(scale, str) else scale
        self.format_weight = format_weight
        self.__name__ = "outcome"

    def __call__(self, prompts, completions, label, **kwargs) -> list[float]:
        out = []
        for completion, gold in zip(completions, label):
            p = parse(completion_text(completion), self.scale)
            out.append(float(p.grade == gold) + self.format_weight * float(p.well_formed))
        return out


# ---------------------------------------------------------------------------------------- advantages
def step_advantages(step_rewards: torch.Tensor, correct: torch.Tensor, group_size: int, kappa_first_error: float = 1.0,
                    kappa_discriminative: float = 1.0, step_threshold: float = 0.5,
                    judged: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """a_{i,k} = w_{i,k} z_{i,k} for [N, K] step rewards of N = B x G rollouts in groups of ``group_size`` (module doc);
    also returns the critical code per step (0 none, 1 first error, 2 discriminative; first error wins).
    ``judged`` [N, K] marks steps whose reward is a verdict (not a missing / unparsable / over-length default): only
    judged steps can be critical; every step enters the group's normalisation."""
    n, k = step_rewards.shape
    r = step_rewards.double().view(-1, group_size, k)
    flat = r.reshape(r.shape[0], -1)
    z = (r - flat.mean(1).view(-1, 1, 1)) / (flat.std(1).view(-1, 1, 1) + 1e-4)
    judged = torch.ones_like(r, dtype=torch.bool) if judged is None else judged.bool().view(-1, group_size, k)
    wrong = (r < step_threshold) & judged
    ok = correct.bool().view(-1, group_size, 1)
    right = (r >= step_threshold) & judged
    first = wrong & (wrong.cumsum(2) == 1) & ~ok
    disc_step = (right & ok).any(1, keepdim=True) & (wrong & ~ok).any(1, keepdim=True)
    disc = disc_step & ((right & ok) | (wrong & ~ok))
    w = 1 + kappa_first_error * first + kappa_discriminative * disc
    code = torch.where(first, 1, torch.where(disc, 2, 0))
    return (w * z).view(n, k).to(step_rewards.dtype), code.view(n, k)


def token_char_offsets(ids, tokenizer) -> list[tuple[int, int]]:
    """(start, end) characters of each token in ``tokenizer.decode(ids, skip_special_tokens=True)``, from prefix
    decodes: token j covers [len(decode(ids[:j])), len(decode(ids[:j+1]))), each cut to the common prefix with the
    full text (a token ending inside a multi-byte character decodes to U+FFFD until the character completes)."""
    ids = [int(i) for i in ids]
    full = tokenizer.decode(ids, skip_special_tokens=True)
    ends, prev = [], 0
    for j in range(len(ids)):
        text = tokenizer.decode(ids[:j + 1], skip_special_tokens=True)
        end = len(os.path.commonprefix([text, full]))
        ends.append(max(end, prev))
        prev = ends[-1]
    return [(0 if j == 0 else ends[j - 1], ends[j]) for j in range(len(ids))]


def completion_step_spans(ids, tokenizer, scale: GradeScale) -> tuple[str, dict[str, tuple[int, int]]]:
    """(text, {step: token range [i, j)}) of one completion's token ids (padding already removed)."""
    offsets = token_char_offsets(ids, tokenizer)
    text = tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
    parsed = parse(text, scale)
    return text, char_to_token_spans({n: s.span for n, s in parsed.steps.items()}, offsets)


def token_advantages(outcome: torch.Tensor, steps: torch.Tensor, spans: list[dict], length: int,
                     process_weight: float = 1.0, process_credit: str = "to_go",
                     advantage_clip: float | None = None) -> torch.Tensor:
    """A_{i,t} of the module doc: [n, length] from outcome [n], step values a [n, K] and token spans per rollout."""
    if process_credit not in ("to_go", "step"):
        raise ValueError(f"process_credit must be 'to_go' or 'step', got {process_credit!r}")
    adv = outcome.view(-1, 1).repeat(1, length).to(steps.dtype)
    for i, sp in enumerate(spans):
        present = sorted(((sp[s][0], sp[s][1], k) for k, s in enumerate(STEPS) if s in sp))
        for j, (a, b, k) in enumerate(present):
            value = steps[i, k] if process_credit == "step" else sum(steps[i, kk] for _, _, kk in present[j:])
            adv[i, a:min(b, length)] += process_weight * value
    return adv.clamp(-advantage_clip, advantage_clip) if advantage_clip is not None else adv


# ------------------------------------------------------------------------------------------- trainer
class SRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with per-token SRPO advantages; ``args`` is an :class:`SRPOConfig`.

    ``examiner`` (an she_lib.examiner.Examiner) gives step rewards; ``replay`` (optional, she_lib.agrl) may rewrite
    the batch before generation and the outputs after scoring. ``rollout_log`` is a JSON-lines path (main process)."""

    def __init__(self, *args, examiner: Examiner | None = None, replay=None, rollout_log: str | Path | None = None,
                 scale: GradeScale | str = "esci", **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = get_scale(scale) if isinstance(scale, str) else scale
        self.examiner = examiner or Examiner(None, HybridConfig(), self.scale)
        self.replay, self.rollout_log, self._generations = replay, rollout_log, 0

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = (rewards * self.reward_weights.to(rewards.device)).nansum(1)  # all processes
        return rewards

    def _generate_and_score_completions(self, inputs):
        from accelerate.utils import gather, gather_object

        if self.replay is not None:
            inputs = self.replay.prepare_inputs(self, inputs)
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        g = self.num_generations if mode == "train" else self.num_generations_eval
        ids, mask = out["completion_ids"], out["completion_mask"].bool()
        eos = self.processing_class.eos_token_id
        texts, spans, truncated = [], [], []
        for row, m in zip(ids, mask):
            kept = row[m].tolist()
            text, sp = completion_step_spans(kept, self.processing_class, self.scale)
            texts.append(text), spans.append(sp), truncated.append(eos not in kept)
        exam = self.examiner.examine([{**ex, "rationale": t, "truncated": tr}
                                      for ex, t, tr in zip(inputs, texts, truncated)])
        dev = ids.device
        rewards_all = gather(torch.tensor(exam.rewards, dtype=torch.float32, device=dev))
        correct_all = gather(torch.tensor(exam.correct, dtype=torch.bool, device=dev))
        from .examiner import SCORED

        judged_all = gather(torch.tensor(np.isin(exam.sources, SCORED), dtype=torch.bool, device=dev))
        steps_all, code_all = step_advantages(rewards_all, correct_all, g, self.args.kappa_first_error,
                                              self.args.kappa_discriminative, self.args.step_threshold, judged_all)
        lo = self.accelerator.process_index * len(inputs)
        steps, code = steps_all[lo:lo + len(inputs)], code_all[lo:lo + len(inputs)]
        outcome = out["advantages"]
        adv = token_advantages(outcome, steps.to(outcome.dtype), spans, ids.shape[1], self.args.process_weight,
                               self.args.process_credit, self.args.advantage_clip)
        out["advantages"] = adv
        if self.replay is not None:
            out = self.replay.adjust_outputs(self, inputs, out, exam)
        m = self._metrics[mode]
        m["srpo/step_reward"].append(rewards_all.mean().item())
        for k, s in enumerate(STEPS):
            m[f"srpo/step_reward/{s}"].append(rewards_all[:, k].mean().item())
        m["srpo/first_error_steps"].append((code_all == 1).float().sum(1).mean().item())
        m["srpo/discriminative_steps"].append((code_all == 2).float().sum(1).mean().item())
        m["srpo/correct"].append(correct_all.float().mean().item())
        m["srpo/process_abs"].append((adv - outcome.view(-1, 1)).abs()[mask].mean().item() if mask.any() else 0.0)
        self._generations += 1
        every = self.args.rollout_log_every
        if self.rollout_log and every and mode == "train" and (self._generations - 1) % every == 0:
            records = gather_object(self._rollout_records(inputs, texts, ids, mask, spans, exam, steps, code, adv,
                                                          outcome, g, lo))
            if self.accelerator.is_main_process:
                Path(self.rollout_log).parent.mkdir(parents=True, exist_ok=True)
                with open(self.rollout_log, "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in records)
        return out

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.replay is not None and self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            self.replay.save(Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if self.replay is not None and checkpoint is not None and (Path(checkpoint) / "agrl_replay.json").exists():
            self.replay.load(json.loads((Path(checkpoint) / "agrl_replay.json").read_text()))

    def _rollout_records(self, inputs, texts, ids, mask, spans, exam, steps, code, adv, outcome, g, lo) -> list[dict]:
        """One record per rollout for the inspector (schema in she_lib.inspector)."""
        tok, recs = self.processing_class, []

        def floats(a):
            return [None if np.isnan(x) else round(float(x), 4) for x in a]

        for i, ex in enumerate(inputs):
            kept = ids[i][mask[i]].tolist()
            token_step = [""] * len(kept)
            for s, (a, b) in spans[i].items():
                for t in range(a, min(b, len(kept))):
                    token_step[t] = s
            p = parse(texts[i], self.scale)
            recs.append({
                "step": int(self.state.global_step), "group": (lo + i) // g, "rollout": (lo + i) % g,
                "example_id": ex.get("example_id"), "query": ex.get("query"), "title": ex.get("title"),
                "label": ex.get("label"), "completion": texts[i], "grade": p.grade, "correct": bool(exam.correct[i]),
                "outcome_reward": round(float(self._last_rewards[lo + i]), 4),
                "outcome_advantage": round(float(outcome[i]), 4), "steps": list(STEPS),
                "step_rewards": {"verifier": floats(exam.verifier[i]), "genrm": floats(exam.genrm[i]),
                                 "combined": floats(exam.rewards[i])},
                "step_sources": [str(s) for s in exam.sources[i]],
                "step_advantages": [round(float(x), 4) for x in steps[i]],
                "critical": [CRITICAL[int(c)] for c in code[i]],
                "tokens": [tok.decode([t], skip_special_tokens=False) for t in kept],
                "token_advantages": [round(float(x), 4) for x in adv[i][mask[i]]],
                "token_steps": token_step})
        return recs


# -------------------------------------------------------------------------------------------- runs
RECORD_COLUMNS = ("example_id", "query", "title", "brand", "colour", "category", "bullets", "description", "label",
                  "query_terms", "negated_terms", "product_type", "matched_terms", "missing_terms", "negation_hits")


def rl_config(profile: Profile | str, method: str = "srpo", output_dir: str | Path = "rl", **overrides) -> SRPOConfig:
    """The SRPOConfig of a method and profile. One optimizer step = ``prompts_per_step`` prompts x G rollouts
    (``per_device_train_batch_size`` = their product / the number of processes of the launch). ``grpo`` sets process_weight 0 (and trains with
    TRL's plain GRPOTrainer); CPU runs train fp32 without gradient checkpointing and without a reference model
    (beta = 0 saves a forward pass per step; set beta for the KL term)."""
    if method not in METHODS:
        raise ValueError(f"unknown RL method {method!r}; choose one of {METHODS}")
    profile = get_profile(profile)
    per = {
        "smoke": dict(num_generations=2, prompts_per_step=2, max_completion_length=16, logging_steps=1, save_steps=2),
        # CPU: 2 prompts x 4 rollouts of <= 128 tokens (a rationale is ~110) per step, lr 5e-5 so that ~12 LoRA steps
        # can move the policy; on a 2-core AVX2 CPU one step takes ~1.5-2 min (training the 8 chats dominates)
        "cpu": dict(num_generations=4, prompts_per_step=2, max_completion_length=128, logging_steps=1, save_steps=2,
                    learning_rate=5e-5),
        "cpu-full": dict(num_generations=4, prompts_per_step=2, max_completion_length=128, logging_steps=1,
                         save_steps=1, learning_rate=5e-5),
        "gpu": dict(num_generations=8, prompts_per_step=16, max_completion_length=256, logging_steps=5, save_steps=50,
                    beta=0.02),
        "colab": dict(num_generations=8, prompts_per_step=8, max_completion_length=256, logging_steps=5,
                      save_steps=50, beta=0.02),
    }.get(profile.name, {})
    merged = {**per, **overrides}
    vllm = merged.pop("vllm", "auto" if profile.name in ("gpu", "colab") else "off")
    merged.update(vllm_settings(vllm))
    g, pps = merged.pop("num_generations", 4), merged.pop("prompts_per_step", 4)
    from .distributed import world_size

    per_device = per_device_rollouts(g, pps, world_size())
    cpu = not torch.cuda.is_available()
    from .sft import _precision

    bf16, fp16 = _precision("auto")
    base = dict(output_dir=str(output_dir), report_to="none", use_cpu=cpu, bf16=bf16, fp16=fp16,
                gradient_checkpointing=not cpu, num_generations=g, per_device_train_batch_size=per_device,
                gradient_accumulation_steps=1, learning_rate=2e-5, lr_scheduler_type="constant", warmup_steps=0,
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
    import importlib.util

    if vllm == "auto":
        vllm = "colocate" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "off"
    if vllm == "off":
        return {"use_vllm": False}
    if vllm not in ("colocate", "server"):
        raise ValueError(f"vllm must be auto, off, colocate or server, got {vllm!r}")
    return {"use_vllm": True, "vllm_mode": vllm, "vllm_gpu_memory_utilization": 0.3}


def prompts_per_step(args: SRPOConfig) -> int:
    """Prompts per optimizer step over all processes."""
    from .distributed import world_size

    return args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size() // args.num_generations


def rl_dataset(df: pd.DataFrame, profile: Profile):
    """``datasets.Dataset`` of {"prompt": [system, user], record columns..., "stage"} in the given order."""
    from datasets import Dataset

    from .schema import build_messages

    scale = get_scale(profile.grade_scale)
    cols = [c for c in (*RECORD_COLUMNS, "stage", "pass_rate") if c in df.columns]
    rows = []
    for r in df[cols].to_dict("records"):
        rows.append({"prompt": build_messages(r, scale, profile.order),
                     **{c: (list(v) if isinstance(v, (list, tuple, np.ndarray)) else v) for c, v in r.items()}})
    return Dataset.from_list(rows)


def train_rl(profile: Profile, method: str, sft_run: str | Path, args: SRPOConfig | None = None,
             curriculum=None, splits: dict | None = None, name: str | None = None, examiner: Examiner | None = None,
             resume: bool = True, callbacks: list | None = None, progress: bool = False) -> Path:
    """RL from an SFT run; returns ``runs_dir/name`` (she_lib.runs protocol: resumes, reuses a finished run).

    1. Prompt set: pass-rate samples of the pool from the SFT model (cached, keyed by the SFT run's stamp), then
       difficulty filter, diversity selection and curriculum order (she_lib.curriculum); ``data_report.json``.
    2. Model: the SFT adapter merged into the base and a fresh LoRA on top (as DPO), so the adapter-disabled
       model is the SFT policy (TRL's reference when ``beta`` > 0).
    3. Trainer: ``grpo`` -> TRL's ``GRPOTrainer`` with :class:`OutcomeReward`; ``srpo`` -> :class:`SRPOTrainer`
       with the examiner's step rewards; ``agrl`` -> :class:`SRPOTrainer` with she_lib.rules' rule reward and
       she_lib.agrl's adaptive guided replay (process_weight as configured; 0 = AGRL on GRPO's advantages).
       ``max_steps`` is the curriculum's step count; the rollout log goes to ``rollouts.jsonl``."""
    from . import runs
    from .curriculum import save_report
    from .modeling import load_run
    from .trl_compat import ensure_trl_cpu_support

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
    if resume and runs.finished(run, profile, key):
        return run
    scale = get_scale(profile.grade_scale)
    prompts, report = rl_prompts(profile, sft_run, curriculum, prompts_per_step(args), splits, progress)
    args.max_steps = report["curriculum"]["steps"]
    last = runs.start(run, profile, key)
    last = last if resume else None
    from .distributed import is_main_process, world_size

    if is_main_process():
        save_report(report, run / "data_report.json")
    policy = load_run(sft_run, profile if torch.cuda.is_available() else profile.replace(dtype="float32"))
    ensure_trl_cpu_support()
    meter = runs.Meter()
    common = dict(model=policy.model, args=args, train_dataset=rl_dataset(prompts, profile), processing_class=policy.tokenizer,
                  peft_config=policy.lora_config, callbacks=[meter, StageLogger(prompts["stage"].tolist(),
                                                                                prompts_per_step(args)),
                                                             *(callbacks or [])])
    if method == "grpo":
        trainer = GRPOTrainer(reward_funcs=[OutcomeReward(scale)], **common)
    elif method == "srpo":
        trainer = SRPOTrainer(reward_funcs=[OutcomeReward(scale)], examiner=examiner, scale=scale,
                              rollout_log=run / "rollouts.jsonl", **common)
    else:
        from .agrl import AdaptiveReplay, AGRLConfig
        from .rules import RuleReward, RuleRewardConfig

        trainer = SRPOTrainer(reward_funcs=[RuleReward(RuleRewardConfig(), scale)], examiner=examiner, scale=scale,
                              replay=AdaptiveReplay(AGRLConfig(), scale, profile.order),
                              rollout_log=run / "rollouts.jsonl", **common)
    if last is None and is_main_process() and (run / "rollouts.jsonl").exists():
        (run / "rollouts.jsonl").unlink()  # a fresh start: the log of an earlier attempt is stale
    runs.fit(trainer, run, last, meter, profile, key, kind=method, order=profile.order, init_adapter=init,
             data=report, processes=world_size())
    if method == "agrl" and is_main_process():  # how often replay fired and whether those prompts recovered
        info = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**info, "replay": trainer.replay.report()}, indent=2))
    return run


def rl_prompts(profile: Profile, sft_run: str | Path, curriculum=None, per_step: int = 4, splits: dict | None = None,
               progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """The RL prompt set in training order and its report (she_lib.curriculum): the pool's pass rates come from
    ``k_samples`` rationales per prompt sampled from the SFT run, in the shared sample cache (sampling.sample_cache):
    every RL method and seed shares them, and so does DPO when it samples the same prompts the same way."""
    from .curriculum import build_rl_prompts
    from .data import load_splits
    from .modeling import load_run
    from .sampling import sample_cache, sample_rationales
    from .sft import _sample

    curriculum = curriculum or curriculum_for(profile)
    splits = splits if splits is not None else load_splits(profile)
    pool = _sample(splits["train"], curriculum.pool_limit, curriculum.seed)
    samples = None
    if curriculum.difficulty or curriculum.curriculum:
        sft_run = Path(sft_run)
        policy = load_run(sft_run, profile)
        cache = sample_cache(profile, sft_run, curriculum.k_samples, curriculum.max_new_tokens, curriculum.temperature,
                             1.0, curriculum.sample_batch_size, curriculum.seed)
        samples = sample_rationales(policy.model, policy.tokenizer, pool, profile, curriculum.k_samples,
                                    curriculum.max_new_tokens, curriculum.temperature, 1.0,
                                    curriculum.sample_batch_size, curriculum.seed, cache=cache, progress=progress)
    return build_rl_prompts(pool, samples, curriculum, get_scale(profile.grade_scale).words, per_step)


def _args_key(args: SRPOConfig) -> dict:
    """The fields of an SRPOConfig that define a run (paths, logging and max_steps, set by the curriculum, excluded)."""
    skip = {"output_dir", "logging_dir", "max_steps", "logging_steps", "save_steps", "report_to"}
    d = {k: v for k, v in args.to_dict().items() if k not in skip}
    return json.loads(json.dumps(d, default=str))


def curriculum_for(profile: Profile | str, **overrides):
    """Pool, sampling and stage budgets per profile (she_lib.curriculum.CurriculumConfig)."""
    from .curriculum import CurriculumConfig

    profile = get_profile(profile)
    per = {
        # the tiny random model never writes a grade: keep every prompt (min_pass 0), one stage of 2 steps
        "smoke": dict(pool_limit=6, k_samples=2, max_new_tokens=16, sample_batch_size=3, min_pass=0.0,
                      boundaries=(), stage_steps=(2,), per_query_cap=None),
        "cpu": dict(pool_limit=16, k_samples=4, stage_steps=(1, 1, 1)),
        # the pool is DPO's 96 sampled prompts (same settings: the shared sample cache serves both)
        "cpu-full": dict(pool_limit=96, k_samples=4, stage_steps=(4, 4, 4)),
        "gpu": dict(pool_limit=4096, k_samples=8, sample_batch_size=64, stage_steps=(100, 100, 100)),
        "colab": dict(pool_limit=1024, k_samples=8, sample_batch_size=32, stage_steps=(40, 40, 40)),
    }.get(profile.name, {})
    return CurriculumConfig(**{**per, **overrides})  # seed 0: RL seeds share one prompt set


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
    """``python -m she_lib.srpo --method srpo --profile cpu-full --sft runs/cpu-full/sft [--seed 1] [--evaluate ...]``"""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m she_lib.srpo", description="GRPO / SRPO / AGRL from an SFT run")
    ap.add_argument("--method", choices=METHODS, default="srpo")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--sft", required=True)
    ap.add_argument("--seed", type=int, default=0, help="the RL seed (LoRA init, sampling); the prompt set is shared")
    ap.add_argument("--name", default=None, help="run folder name (default: <method>, or <method>_s<seed>)")
    ap.add_argument("--genrm", default=None, help="a GenRM run folder for the examiner (default: verifier only)")
    ap.add_argument("--vllm", choices=["auto", "off", "colocate", "server"], default=None,
                    help="rollouts with vLLM (default: auto on the gpu/colab profiles, off elsewhere)")
    ap.add_argument("--evaluate", nargs="*", default=[], choices=["generate", "first_token"])
    ap.add_argument("--save", action="store_true")
    a = ap.parse_args(argv)
    sft_info = json.loads((Path(a.sft) / "run.json").read_text())
    profile = get_profile(a.profile, order=sft_info.get("order", "grade_first"))
    examiner = None
    if a.genrm:
        from .genrm import GenRM

        examiner = Examiner(GenRM.load(a.genrm, profile), HybridConfig(), profile.grade_scale)
    name = a.name or (a.method if a.seed == 0 else f"{a.method}_s{a.seed}")
    args = rl_config(profile, a.method, seed=a.seed, data_seed=a.seed, **({"vllm": a.vllm} if a.vllm else {}))
    run = train_rl(profile, a.method, a.sft, args, name=name, examiner=examiner, progress=True)
    from .distributed import is_main_process

    if not is_main_process():
        return 0
    info = json.loads((run / "run.json").read_text())
    print(json.dumps({k: info.get(k) for k in ("kind", "global_step", "train_loss", "seconds")}, indent=1))
    if a.evaluate:
        from .evaluate import report_run

        report_run(run, profile, a.evaluate, a.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
