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

:class:`SRPOTrainer` changes the algorithm in one hook, ``_generate_and_score_completions``; AGRL's replay
(she_lib.agrl) plugs into the same method through ``prepare_inputs`` / ``adjust_outputs`` callbacks. Three small
overrides only record: ``_calculate_rewards`` keeps the summed rewards for the rollout log, ``_save_checkpoint`` /
``_load_optimizer_and_scheduler`` keep the replay state in checkpoints (TRL does the same for its entropy state). Every knob is a field of
:class:`SRPOConfig` (a ``trl.GRPOConfig``). Budgets, data, training and resuming of all three methods: she_lib.rl.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from trl import GRPOConfig, GRPOTrainer

from .examiner import Examiner, HybridConfig
from .labels import GradeScale, get_scale
from .schema import STEPS, char_to_token_spans, completion_text, parse

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
        self.scale = get_scale(scale)
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
        self.scale = get_scale(scale)
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


